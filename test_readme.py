"""Every Python snippet of the README runs, on the test models: hub names replaced by the test checkpoints'
directories, 128 steps and tokens by 8, CUDA by the CPU, and Dream's hub code (`AutoModel` with
trust_remote_code, its `diffusion_generate`) by the transcription of its loop in test_samplers.py. A snippet
that no longer holds what is replaced here fails, so that none can rot."""

import os
import re

import pytest
import torch

import entrgi
from test_samplers import dream_generate

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")


def snippets():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


class DreamHubModel:
    """What `AutoModel.from_pretrained(Dream, trust_remote_code=True)` gives: a model with Dream's
    `diffusion_generate(inputs, generation_config, **kwargs)`, its loop transcribed."""

    def __init__(self, path):
        self.model, self.tokenizer = entrgi.load_dllm(path)
        self.config = self.model.config
        self.generation_config = object()

    def to(self, device):
        return self

    def eval(self):
        return self

    def diffusion_generate(self, inputs, generation_config=None, max_new_tokens=None, steps=None,
                           temperature=0.0, top_p=None, alg="origin", alg_temp=0.0,
                           generation_logits_hook_func=lambda step, x, logits: logits):
        # on transformers 4.51-4.57 Dream's code needs the model's own generation config (see the README)
        assert generation_config is self.generation_config
        mask = self.tokenizer.mask_token_id
        x = torch.cat([inputs, torch.full((inputs.shape[0], max_new_tokens), mask)], 1)
        forward = lambda x: entrgi.dllm_logits(self.model, x, torch.ones_like(x, dtype=torch.bool))
        with torch.no_grad():                            # Dream's generate is decorated so
            return dream_generate(forward, x, steps, temperature, top_p, alg, mask, generation_logits_hook_func)


class AutoModel:
    @staticmethod
    def from_pretrained(name, torch_dtype=None, trust_remote_code=False):
        assert trust_remote_code
        return DreamHubModel(name)


class AutoTokenizer:
    @staticmethod
    def from_pretrained(name, trust_remote_code=False):
        return entrgi.load_dllm(name)[1]


def test_the_readme_has_its_three_snippets():
    assert len(snippets()) == 3


@pytest.mark.parametrize("n", range(3))
def test_readme_snippet_runs(n, dream_dir, llada_dir, rm_dir, lm_dir):
    code = snippets()[n]
    replace = {'"Dream-org/Dream-v0-Instruct-7B"': repr(dream_dir), '"GSAI-ML/LLaDA-8B-Instruct"': repr(llada_dir),
               '"Skywork/Skywork-Reward-V2-Qwen3-1.7B"': repr(rm_dir), '"Qwen/Qwen3-0.6B"': repr(lm_dir),
               "T=128, L=128": "T=8, L=8",
               'device = "cuda"\n': 'device = "cpu"\n',
               "from transformers import AutoModel, AutoTokenizer\n": ""}
    for old, new in replace.items():
        if old in code:
            code = code.replace(old, new)
    assert "128" not in code and "cuda\"\n" not in code, "a snippet the test does not know how to shrink"
    scope = {"AutoModel": AutoModel, "AutoTokenizer": AutoTokenizer}
    torch.manual_seed(0)
    exec(compile(code, f"README.md python snippet {n + 1}", "exec"), scope)
    texts, cfg = scope["texts"], scope["cfg"]
    if "loglik_texts" in code:                                         # each text's mean log-likelihood
        assert scope["R"].shape == (cfg.K,) and (scope["R"] < 0).all()
    assert len(texts) == cfg.K and all(isinstance(t, str) for t in texts)
