"""Small checkpoints built in the test session, laid out as the hub lays out the real ones:
- a Dream-v0-Instruct-7B-style dLLM (random Qwen2 weights, model_type "Dream", a byte-level BPE
  tokenizer named "DreamTokenizer" with a mask token);
- a LLaDA-8B-Instruct-style dLLM (LLaDA's config keys and weight names, random weights, a fast
  tokenizer with LLaDA's special tokens and chat template, no mask token declared);
- a Qwen3ForSequenceClassification reward model whose tokenizer has a different but overlapping
  vocabulary;
- beside the real tokenizers (../shared/tokenizers, or the hub's where it answers): Dream and
  Skywork-Reward-V2 models of the real vocabulary sizes, random and tiny otherwise."""

import json
import os
import shutil
import subprocess
import sys
import time

# torch's threads, here and in the command lines the tests start: one (set before torch loads). On a
# 2-core machine with other work running, a thread per core ran the tests 3-10 times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")   # tests never reach a hub

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: whole prompts files, torchrun, torch.compile, a million draws "
                                       "(python -m pytest -m 'not slow' runs the rest)")

def slowdown():
    """How many times slower than idle this machine runs now: its 1-minute load per core, at least 1."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1)) if hasattr(os, "getloadavg") else 1.0


class Patience:
    """A time limit in idle-machine seconds: each second of the clock counts 1 / slowdown(), so the machine's load
    cannot run past it by itself, while a hang still ends there. True while time is left."""

    def __init__(self, seconds):
        self.left = seconds
        self.last = time.monotonic()

    def __bool__(self):
        now = time.monotonic()
        self.left -= (now - self.last) / slowdown()
        self.last = now
        return self.left > 0


def finish(process, seconds):
    """process.communicate() within `seconds` of Patience: (stdout, stderr); past them the process is killed and
    subprocess.TimeoutExpired raised."""
    patience = Patience(seconds)
    while patience:
        try:
            return process.communicate(timeout=1)
        except subprocess.TimeoutExpired:
            pass
    process.kill()
    process.communicate()
    raise subprocess.TimeoutExpired(process.args, seconds)


def run(cmd, seconds, **popen):
    """subprocess.run(cmd, capture_output=True, **popen) within `seconds` of Patience."""
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    out, err = finish(process, seconds)
    return subprocess.CompletedProcess(cmd, process.returncode, out, err)


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
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet))
    return tok


def special(content):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


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


def qwen3(path, vocab_size, layers, hidden, seed, **fields):
    """A Qwen3Config for a random model saved at `path` with its own tokenizer (a byte-level BPE of its own corpus,
    eos <|im_end|>) and chat template; the torch seed set for its weights."""
    from transformers import PreTrainedTokenizerFast, Qwen3Config
    bpe = train_bpe(CORPUS_A[:3] + CORPUS_B, vocab_size)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = CHAT
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    return Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, **fields)


def build_reward_model(path, vocab_size=360, layers=2, hidden=64, seed=1):
    """A random one-label Qwen3ForSequenceClassification with its own tokenizer and chat template."""
    from transformers import Qwen3ForSequenceClassification
    model = Qwen3ForSequenceClassification(qwen3(path, vocab_size, layers, hidden, seed, num_labels=1,
                                                 tie_word_embeddings=False))
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)                       # rewards of order 1
    model.save_pretrained(path)
    return path


def build_causal_lm(path, vocab_size=360, layers=2, hidden=64, seed=4):
    """A random Qwen3ForCausalLM with the reward model's kind of tokenizer and chat template: a
    log-likelihood reward (--reward loglik), laid out as Qwen/Qwen3-0.6B is (tied embeddings)."""
    from transformers import Qwen3ForCausalLM
    model = Qwen3ForCausalLM(qwen3(path, vocab_size, layers, hidden, seed, tie_word_embeddings=True))
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 0.25)      # log-likelihoods that differ by text
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory):
    return str(build_causal_lm(tmp_path_factory.mktemp("lm")))


@pytest.fixture(scope="session")
def dream_dir(tmp_path_factory):
    return str(build_dream(tmp_path_factory.mktemp("dream")))


@pytest.fixture(scope="session")
def rm_dir(tmp_path_factory):
    return str(build_reward_model(tmp_path_factory.mktemp("rm")))


@pytest.fixture(scope="session")
def judge_dir(tmp_path_factory):
    """A second reward model (other random weights): an independent judge."""
    return str(build_reward_model(tmp_path_factory.mktemp("judge"), seed=5))


LLADA_TOKENS = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                "<|mdm_mask|>"]
LLADA_CHAT = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
              "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
              "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def build_llada(path, layers=2, d=64, heads=4, mlp=96, seed=2):
    """A random LLaDA checkpoint: config.json with LLaDA's (OLMo-style) keys, weights under LLaDA's own
    names (safetensors), a fast tokenizer whose config names bos and eos but not the mask token."""
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast
    os.makedirs(path, exist_ok=True)
    bpe = train_bpe(CORPUS_A, 300)
    bpe.add_special_tokens(LLADA_TOKENS)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|startoftext|>", eos_token="<|endoftext|>")
    tok.chat_template = LLADA_CHAT
    tok.save_pretrained(path)
    ids = {s: tok.convert_tokens_to_ids(s) for s in LLADA_TOKENS}
    rows = (len(tok) + 63) // 64 * 64                            # embedding_size may exceed the tokenizer
    config = {"model_type": "llada", "architectures": ["LLaDAModelLM"],
              "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM"},
              "d_model": d, "n_heads": heads, "n_kv_heads": heads, "n_layers": layers, "mlp_hidden_size": mlp,
              "mlp_ratio": 4, "vocab_size": rows, "embedding_size": rows, "rope": True, "rope_theta": 500000.0,
              "rope_full_precision": True, "rms_norm_eps": 1e-05, "max_sequence_length": 256, "weight_tying": False,
              "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "include_bias": False,
              "alibi": False, "scale_logits": False, "clip_qkv": None, "attention_layer_norm": False,
              "attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0, "init_fn": "mitchell",
              "init_std": 0.02, "flash_attention": False, "use_cache": False, "precision": "amp_bf16",
              "mask_token_id": ids["<|mdm_mask|>"], "eos_token_id": ids["<|endoftext|>"],
              "pad_token_id": ids["<|endoftext|>"], "torch_dtype": "bfloat16", "transformers_version": "4.46.3"}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    g = torch.Generator().manual_seed(seed)
    w = lambda *shape, scale=0.08: torch.randn(*shape, generator=g) * scale
    weights = {"model.transformer.wte.weight": w(rows, d, scale=1.0), "model.transformer.ln_f.weight": 1 + w(d),
               "model.transformer.ff_out.weight": w(rows, d, scale=0.3)}
    for i in range(layers):
        b = f"model.transformer.blocks.{i}."
        weights.update({b + "attn_norm.weight": 1 + w(d), b + "ff_norm.weight": 1 + w(d), b + "q_proj.weight": w(d, d),
                        b + "k_proj.weight": w(d, d), b + "v_proj.weight": w(d, d), b + "attn_out.weight": w(d, d),
                        b + "ff_proj.weight": w(mlp, d), b + "up_proj.weight": w(mlp, d),
                        b + "ff_out.weight": w(d, mlp)})
    save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="session")
def llada_dir(tmp_path_factory):
    return str(build_llada(tmp_path_factory.mktemp("llada")))


REAL_TOKENIZERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "tokenizers")
HUB_TOKENIZERS = {"dream-v0-instruct-7b": "Dream-org/Dream-v0-Instruct-7B",
                  "skywork-reward-v2-qwen3-1.7b": "Skywork/Skywork-Reward-V2-Qwen3-1.7B"}
TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja"]
FETCH = """import sys
from huggingface_hub import HfApi, snapshot_download
HfApi().model_info(sys.argv[1], timeout=20)
print(snapshot_download(sys.argv[1], allow_patterns=sys.argv[2:]))"""


@pytest.fixture(scope="session")
def real_tokenizers():
    """The real tokenizers' folders (Dream-v0-Instruct-7B, Skywork-Reward-V2-Qwen3-1.7B): the project's shared
    folder's where it lies beside the repository (as in CI), else the hub's (their tokenizer files only, a few
    MB, into the hub's cache), else a skip that says how to run them."""
    folders = [os.path.join(REAL_TOKENIZERS, name) for name in HUB_TOKENIZERS]
    if all(map(os.path.isdir, folders)):
        return tuple(folders)
    try:
        return tuple(subprocess.run([sys.executable, "-c", FETCH, name, *TOKENIZER_FILES], capture_output=True,
                                    text=True, timeout=120, check=True, env={**os.environ, "HF_HUB_OFFLINE": "0"}
                                    ).stdout.strip().splitlines()[-1] for name in HUB_TOKENIZERS.values())
    except (subprocess.SubprocessError, OSError, IndexError):
        pytest.skip("the real tokenizers are neither in ../shared/tokenizers nor reachable on the hub: where "
                    "huggingface.co answers, `python -m pytest test_real_tokenizers.py` fetches them (a few MB)")


@pytest.fixture(scope="session")
def real_vocab_dirs(real_tokenizers, tmp_path_factory):
    """Tiny random models with the real vocabulary sizes (Dream 152064 rows, Skywork 151936) saved beside
    the real tokenizers, with the real models' special token ids in their configs."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForSequenceClassification
    dream, skywork = (str(tmp_path_factory.mktemp(n)) for n in ("dream_real", "skywork_real"))
    for src, dst in zip(real_tokenizers, (dream, skywork)):
        shutil.copytree(src, dst, dirs_exist_ok=True)
    torch.manual_seed(3)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=152064, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                                         tie_word_embeddings=False))
    model.save_pretrained(dream)
    with open(os.path.join(dream, "config.json")) as f:
        raw = json.load(f)
    raw.update(model_type="Dream", architectures=["DreamModel"], mask_token_id=151666, pad_token_id=151643,
               bos_token_id=151643, eos_token_id=151643)
    with open(os.path.join(dream, "config.json"), "w") as f:
        json.dump(raw, f)
    rm = Qwen3ForSequenceClassification(Qwen3Config(vocab_size=151936, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                                    head_dim=16, max_position_embeddings=512, num_labels=1,
                                                    pad_token_id=151643, tie_word_embeddings=False))
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0)
    rm.save_pretrained(skywork)
    return dream, skywork
