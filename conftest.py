"""Small checkpoints built in the test session, laid out as the hub lays out the real ones:
a Dream-v0-Instruct-7B-style dLLM (random Qwen2 weights, model_type "Dream", a byte-level BPE
tokenizer named "DreamTokenizer" with a mask token) and a Qwen3ForSequenceClassification
reward model whose tokenizer has a different but overlapping vocabulary."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # tests never reach a hub

CORPUS_A = """The quick brown fox jumps over the lazy dog. Hello world, how are you today?
I am fine, thank you. Diffusion language models reveal tokens in any order.
A reward model scores a response to a prompt. Write a short poem about the sea.
The sea is calm and blue, the waves are soft and slow. Explain gradients to a child.
Numbers: one two three four five six seven eight nine ten. Good answers are helpful and kind.""".split("\n")
CORPUS_B = """Reward guidance steers sampling toward text a judge prefers. The judge reads every token.
Helpful, honest and harmless answers score well. Rude answers score badly.
Hello world, the quick brown fox is helpful. Tokens are pieces of words.""".split("\n")
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def train_bpe(texts, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def special(content):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}


def build_dream(path, vocab_size=320, layers=2, hidden=64, seed=0, max_positions=256):
    """A random Dream checkpoint: vocab.json + merges.txt + tokenizer_config.json like the hub's."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    os.makedirs(path, exist_ok=True)
    bpe = train_bpe(CORPUS_A, vocab_size)
    bpe.model.save(str(path))
    n = bpe.get_vocab_size()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "DreamTokenizer",
                   "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
                   "added_tokens_decoder": {str(n + i): special(s) for i, s in enumerate(specials)},
                   "bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                   "mask_token": "<|mask|>", "unk_token": None, "chat_template": CHAT,
                   "model_max_length": max_positions, "errors": "replace"}, f)
    padded_vocab = (n + len(specials) + 63) // 64 * 64          # like Dream's 152064 rows for 151667 tokens
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=padded_vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    raw.pop("rope_parameters", None)
    raw.update(model_type="Dream", architectures=["DreamModel"], rope_theta=10000.0, rope_scaling=None,
               auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
               mask_token_id=n + 3, pad_token_id=n, bos_token_id=n, eos_token_id=n, torch_dtype="bfloat16")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(raw, f)
    return path


def build_reward_model(path, vocab_size=360, layers=2, hidden=64, seed=1):
    """A random one-label Qwen3ForSequenceClassification with its own tokenizer and chat template."""
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForSequenceClassification
    bpe = train_bpe(CORPUS_A[:3] + CORPUS_B, vocab_size)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = CHAT
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         num_labels=1, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = Qwen3ForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)                       # rewards of order 1
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def dream_dir(tmp_path_factory):
    return str(build_dream(tmp_path_factory.mktemp("dream")))


@pytest.fixture(scope="session")
def rm_dir(tmp_path_factory):
    return str(build_reward_model(tmp_path_factory.mktemp("rm")))
