"""LLaDA-8B-Instruct's layout through the same loading code and the same sampler: a small random
checkpoint with LLaDA's config keys, weight names and tokenizer (conftest.py), no remote code."""

import json
import math
import os
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import conftest
import entrgi

HERE = os.path.dirname(os.path.abspath(__file__))
# LLaDA's weight names -> transformers' Llama names, written out from LLaDA's published layout
NAMES = {"model.transformer.wte.weight": "model.embed_tokens.weight",
         "model.transformer.ln_f.weight": "model.norm.weight", "model.transformer.ff_out.weight": "lm_head.weight"}
BLOCK = {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
         "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj", "ff_norm": "post_attention_layernorm",
         "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}


@pytest.fixture(scope="module")
def llada(llada_dir):
    return entrgi.load_dllm(llada_dir)


def test_every_llada_weight_lands_where_it_belongs(llada, llada_dir):
    model, _ = llada
    saved = load_file(os.path.join(llada_dir, "model.safetensors"))
    params = dict(model.named_parameters())
    for name, tensor in saved.items():
        parts = name.split(".")
        target = NAMES.get(name) or f"model.layers.{parts[3]}.{BLOCK[parts[4]]}.weight"
        assert torch.equal(params.pop(target), tensor), name
    assert params == {}                                                     # nothing left random
    assert type(model).__name__ == "LlamaForCausalLM" and not any(p.requires_grad for p in model.parameters())
    assert all(not layer.self_attn.is_causal for layer in model.model.layers)


def llada_forward(w, ids, config):
    """LLaDA's forward written from its architecture, on the raw LLaDA tensors: RMSNorm, rotary
    embedding (half rotation), full bidirectional attention, a SiLU-gated MLP, no shift."""
    d, H, eps = config["d_model"], config["n_heads"], config["rms_norm_eps"]
    hd, T = d // H, ids.shape[1]
    norm = lambda x, g: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g
    inv = 1.0 / config["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd)
    angles = torch.cat([torch.outer(torch.arange(T).float(), inv)] * 2, -1)   # (T, hd)
    rope = lambda x: x * angles.cos() + torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1) * angles.sin()
    x = w["model.transformer.wte.weight"][ids]
    for i in range(config["n_layers"]):
        b = lambda n: w[f"model.transformer.blocks.{i}.{n}.weight"]
        h = norm(x, b("attn_norm"))
        q, k, v = ((h @ b(n).T).view(1, T, H, hd).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
        att = torch.softmax(rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(hd), -1) @ v
        x = x + att.transpose(1, 2).reshape(1, T, d) @ b("attn_out").T
        h = norm(x, b("ff_norm"))
        x = x + (torch.nn.functional.silu(h @ b("ff_proj").T) * (h @ b("up_proj").T)) @ b("ff_out").T
    return norm(x, w["model.transformer.ln_f.weight"]) @ w["model.transformer.ff_out.weight"].T


def test_llada_logits_are_llada_forward_unshifted(llada, llada_dir):
    model, tok = llada
    with open(os.path.join(llada_dir, "config.json")) as f:
        config = json.load(f)
    ids = torch.randint(0, 290, (1, 14), generator=torch.Generator().manual_seed(0))
    valid = torch.ones_like(ids, dtype=torch.bool)
    expected = llada_forward(load_file(os.path.join(llada_dir, "model.safetensors")), ids, config)
    logits = entrgi.dllm_logits(model, ids, valid)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)          # row i predicts token i: no shift
    torch.testing.assert_close(entrgi.dllm_logits(model, ids, valid, last=5), expected[:, -5:], rtol=1e-4, atol=1e-4)


def test_llada_tokenizer_mask_template_and_end_tokens(llada, llada_dir):
    model, tok = llada
    with open(os.path.join(llada_dir, "tokenizer_config.json")) as f:
        assert "mask_token" not in json.load(f)                                # as on the hub: not declared
    assert tok.mask_token == "<|mdm_mask|>" and tok.mask_token_id == model.config.mask_token_id
    text = tok.decode(entrgi.dllm_prompt_ids(tok, " Hi there "))
    assert text == "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>" \
                   "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert entrgi.end_ids(tok) == sorted(tok.convert_tokens_to_ids(["<|endoftext|>", "<|eot_id|>"]))


def edited(llada_dir, tmp_path, weights=None, config=None):
    """A copy of the checkpoint with weights and/or config.json changed."""
    path = tmp_path / "edited"
    shutil.copytree(llada_dir, path)
    if weights:
        w = load_file(str(path / "model.safetensors"))
        weights(w)
        save_file(w, str(path / "model.safetensors"), metadata={"format": "pt"})
    if config:
        c = json.loads((path / "config.json").read_text())
        c.update(config)
        (path / "config.json").write_text(json.dumps(c))
    return str(path)


@pytest.mark.parametrize("change, message", [
    (dict(weights=lambda w: w.pop("model.transformer.blocks.1.up_proj.weight")),
     "missing ['model.layers.1.mlp.up_proj"),
    (dict(weights=lambda w: w.update({"model.transformer.blocks.0.extra.weight": torch.zeros(2)})),
     "unexpected ['model.transformer.blocks.0.extra.weight']"),
    (dict(config={"architectures": ["LLaDAMoEModelLM"], "moe_num_experts": 64}),   # LLaDA-MoE-7B-A1B's config
     "is LLaDAMoEModelLM, a mixture of experts"),
    (dict(config={"architectures": ["LLaDAModelLMv2"]}), "but architecture LLaDAModelLMv2"),
])
def test_llada_loading_is_strict(llada_dir, tmp_path, change, message):
    with pytest.raises(entrgi.InputError, match=".*" + message.replace("[", r"\[").replace(".", r"\.")):
        entrgi.load_dllm(edited(llada_dir, tmp_path, **change))


LLADA_OWN = ["--remasking", "probability", "--schedule", "linear", "--no-eos-last", "--top-p", "1", "--temperature",
             "1"]
CASES = [(m, []) for m in entrgi.METHODS] + [("bon", LLADA_OWN), ("entrgi", LLADA_OWN)]


@pytest.mark.parametrize("method, rules", CASES)
def test_llada_cli_end_to_end_with_blocks(method, rules, llada_dir, rm_dir, tmp_path):
    out, page = tmp_path / "run.jsonl", tmp_path / "trace.html"
    p = conftest.run([sys.executable, os.path.join(HERE, "entrgi.py"), "--dllm", llada_dir, "--reward-model", rm_dir,
                        "--prompt", "Write a poem about the sea", "--method", method, "--samples", "2", "--steps", "8",
                        "--max-new-tokens", "8", "--block-length", "4", "--device", "cpu", "--output", str(out),
                        "--trace", str(page), *rules], 300, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr
    result = json.loads(out.read_text().splitlines()[0])
    assert result["method"] == method and result["settings"]["block_length"] == 4 and len(result["responses"]) == 2
    expected = ("probability", "linear", False) if rules else ("entropy", "dream", True)
    assert tuple(result["settings"][k] for k in ("remasking", "schedule", "eos_last")) == expected
    assert all("<|mdm_mask|>" not in r["text"] for r in result["responses"])
    assert "Traceback" not in p.stderr and page.exists()
