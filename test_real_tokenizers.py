"""The real tokenizers of Dream-v0-Instruct-7B and Skywork-Reward-V2-Qwen3-1.7B (from the project's shared
folder, ../shared/tokenizers, or else from the hub: conftest.real_tokenizers): the vocabulary map,
the chat formats, the end tokens, the reward model's response slot, and a run end to end with tiny
random models of the real vocabulary sizes."""

import json
import os
import sys

import pytest
import torch

import conftest
import entrgi

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def tokenizers(real_tokenizers):
    from transformers import AutoTokenizer, Qwen2Tokenizer
    dream, skywork = real_tokenizers
    return Qwen2Tokenizer.from_pretrained(dream), AutoTokenizer.from_pretrained(skywork)


def test_vocabulary_map_finds_all_but_two_tokens(tokenizers, capsys):
    dream, skywork = tokenizers
    ids, overlap = entrgi.vocab_map(dream, skywork, 152064)
    assert round(overlap * len(dream)) == 151665 and len(dream) == 151667
    assert "vocabulary map: 151665 of the dLLM's 151667 tokens (100.00%)" in capsys.readouterr().err
    assert torch.equal(ids[:151643], torch.arange(151643))                     # the regular tokens keep their ids
    # the two Dream-only tokens, and the padded rows, go to the reward model's eos (it has no unk token)
    assert skywork.unk_token is None and skywork.eos_token == "<|im_end|>"
    for token in ("<|mask|>", "<|beginoftext|>"):
        assert ids[dream.convert_tokens_to_ids(token)] == 151645
    assert (ids[151667:] == 151645).all()


def test_dream_chat_prompt_and_end_tokens(tokenizers):
    dream, _ = tokenizers
    assert dream.decode(entrgi.dllm_prompt_ids(dream, "Hi")) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert entrgi.end_ids(dream) == [151643, 151645]
    assert dream.mask_token == "<|mask|>" and dream.mask_token_id == 151666


def test_reward_slot_with_the_qwen3_template(tokenizers):
    dream, skywork = tokenizers
    [prefix], [suffix] = entrgi.rm_slots(skywork, ["Hi"])
    assert skywork.decode(prefix) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert skywork.decode(suffix) == "<|im_end|>\n"
    lead = entrgi.stripped_ids(dream, skywork)                                 # the template strips leading newlines
    assert {198, 271} <= set(lead) and all(set(dream.decode([i])) == {"\n"} for i in lead)


@pytest.fixture(scope="module")
def real_rm(real_vocab_dirs):
    return entrgi.load_reward_model(real_vocab_dirs[1])


@pytest.mark.parametrize("reply", ["Hello world, how are you?", "\n\nHello world", "\nHi\n\nthere", "\n\n"])
def test_guidance_reward_equals_the_text_reward_for_replies_with_leading_newlines(tokenizers, real_rm, reply):
    """The template strips a reply's leading newlines; the reward that guidance computes from embeddings
    hides the leading newline tokens too, so both read the same reply. Dream's tokens, an end token and
    junk after it, against the decoded text scored through the template."""
    dream, _ = tokenizers
    rm, skywork = real_rm
    tokens = dream(reply, add_special_tokens=False)["input_ids"] + [151645] + dream("junk after the end")["input_ids"]
    tokens = torch.tensor([tokens])
    ids, _ = entrgi.vocab_map(dream, skywork, 152064, verbose=False)
    E = rm.get_input_embeddings().weight[ids]
    reward = entrgi.make_reward(rm, *entrgi.rm_slots(skywork, ["Hi"]), 1, entrgi.end_ids(dream),
                                entrgi.stripped_ids(dream, skywork))
    with torch.no_grad():
        R = reward(E[tokens], tokens)
    text = entrgi.decode(dream, tokens, entrgi.end_ids(dream))
    assert text == [reply]
    torch.testing.assert_close(R, entrgi.score_texts(rm, skywork, ["Hi"], text), rtol=0, atol=1e-5)


def test_cli_with_the_real_vocabularies(real_vocab_dirs, tmp_path):
    dream, skywork = real_vocab_dirs
    out = tmp_path / "run.jsonl"
    p = conftest.run([sys.executable, os.path.join(HERE, "entrgi.py"), "--dllm", dream, "--reward-model", skywork,
                        "--prompt", "Write a haiku about rain.", "--samples", "2", "--steps", "4",
                        "--max-new-tokens", "8",
                        "--device", "cpu", "--output", str(out)], 300, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr
    assert "vocabulary map: 151665 of the dLLM's 151667 tokens (100.00%) found" in p.stderr
    result = json.loads(out.read_text().splitlines()[0])
    from transformers import Qwen2Tokenizer
    tok = Qwen2Tokenizer.from_pretrained(dream)
    for r in result["responses"]:
        assert "<|mask|>" not in r["text"]
        assert r["text"] == tok.decode(tok(r["text"], add_special_tokens=False)["input_ids"])
    assert any(r["text"] for r in result["responses"])
