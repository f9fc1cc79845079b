"""The guided step as a GPU runs it, checked on the CPU: nothing inside the denoising loop (nor in a logits
hook call) reads a value back from the device; every tensor lives on the device it is used on; the mask
token is never revealed, whatever the denoiser proposes; compiled models give the eager results."""


import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import entrgi

# The operations that make a CUDA host wait for the device: a value read back (item, int(), bool(), tolist),
# a result whose size depends on values (nonzero, masked_select, indexing by a boolean tensor).
WAITING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "nonzero_static", "unique", "_unique2"}
WAITING_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


class HostWaits(TorchDispatchMode):
    """Counts, while `on`, the aten operations and Tensor methods that wait for the device."""

    def __init__(self):
        super().__init__()
        self.on, self.seen = False, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if self.on:
            boolean_index = name == "index" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []))
            if name in WAITING_OPS or boolean_index:
                self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_waits(monkeypatch):
    mode = HostWaits()
    for method in WAITING_METHODS:
        original = getattr(torch.Tensor, method)

        def counted(self, *a, _original=original, _name=method, **k):
            if mode.on:
                mode.seen.append(_name)
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, method, counted)
    with mode:
        yield mode


def small_problem(V=40, L=12, end=1):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(V, L, V, generator=g) * 0.3

    def denoiser(y):                                    # logits that depend on the revealed tokens
        seen = torch.zeros(y.shape[0], V).scatter_add_(1, y, torch.ones(y.shape)) / y.shape[1]   # (N, V)
        return torch.einsum("nv,vlw->nlw", seen, W) + torch.randn(L, V, generator=torch.Generator().manual_seed(1))
    E, c = torch.randn(V, 4, generator=g), torch.randn(4, generator=g)
    reward = lambda e, tokens: (torch.tanh(e @ c) * entrgi.reads(tokens, torch.tensor([end]))).sum(-1)
    return denoiser, reward, E


@pytest.mark.parametrize("method, top_p, remasking", [("entrgi", 0.95, "entropy"), ("aps", 0.6, "probability"),
                                                      ("soft", 1.0, "margin"), ("bon", 0.9, "random")])
def test_no_host_wait_inside_the_denoising_loop(host_waits, method, top_p, remasking):
    """From the end of the first step to the end of the last (every later step whole, guided and not),
    nothing waits for the device; after the loop, one read: the check that every step's logits were numbers."""
    V, L = 40, 12
    denoiser, reward, E = small_problem(V, L)
    cfg = entrgi.Config(method=method, K=3, T=L, L=L, M=2, top_p=top_p, remasking=remasking, guide_every=2)
    waits = []                                           # the waits seen by the end of each step

    def on_step(k, y, likely):
        host_waits.on = True
        waits.append(len(host_waits.seen))
    y, _ = entrgi.sample(denoiser, reward, E, [0, 1], V - 1, [1], cfg, on_step=on_step)
    host_waits.on = False
    assert len(waits) > 3 and waits[-1] == 0
    assert host_waits.seen == ["__bool__", "_local_scalar_dense.default"]          # the check after the loop
    assert not (y == V - 1).any()


def test_the_waits_are_seen_when_there_are_some(host_waits):
    """The counter is not blind: each kind it looks for is found."""
    x = torch.tensor([1.0, -2.0, 3.0])
    host_waits.on = True
    x.sum().item()
    x[x > 0]
    torch.nonzero(x)
    bool(x[0] > 0)
    host_waits.on = False
    assert {"item", "__bool__"} <= set(host_waits.seen)
    assert any(s.startswith("nonzero") for s in host_waits.seen) and len(host_waits.seen) >= 4


def test_no_host_wait_in_a_logits_hook_call(host_waits):
    V, L, P = 40, 10, 3
    denoiser, reward, E = small_problem(V, L)
    cfg = entrgi.Config(method="entrgi", K=2, T=L, L=L, M=2)
    hook = entrgi.logits_hook(reward, E, cfg, V - 1, P, torch.Generator().manual_seed(0))
    x = torch.full((2, P + L), V - 1)
    x[:, :P] = 5
    x[:, P + 2] = 7                                      # one revealed response token
    logits = torch.randn(2, P + L, V)
    host_waits.on = True
    out = hook(0, x, logits)
    host_waits.on = False
    assert host_waits.seen == [] and out.shape == (2, P + L, V)


def test_the_mask_token_is_never_revealed_even_when_the_denoiser_proposes_it():
    """A denoiser whose most likely token everywhere is the mask: sample reveals other tokens only."""
    V, L, mask = 20, 8, 19
    logits = torch.randn(L, V, generator=torch.Generator().manual_seed(0))
    logits[:, mask] = 8.0
    for method in ("bon", "entrgi"):
        cfg = entrgi.Config(method=method, K=8, T=L, L=L, M=1, top_p=1.0)
        y, _ = entrgi.sample(lambda y: logits.expand(y.shape[0], -1, -1), lambda e, t: e.sum((1, 2)),
                             torch.randn(V, 3), [0, 1, 2, 3, 4, 5, 6, 7], mask, [0], cfg)
        assert not (y == mask).any()


@pytest.mark.skipif(not torch.backends.cuda.is_built(), reason="needs a CUDA build of torch (no GPU needed): "
                    "pip install torch==2.14.1 into another environment to run it")
def test_every_tensor_of_the_loop_lives_on_the_gpu_fake_tensors(monkeypatch):
    """On fake CUDA tensors (FakeTensorMode: shapes and devices, no memory, no GPU), a CPU tensor meeting
    a CUDA one raises, and so does any value read back: the denoiser, the reward, `sample` under every
    rule and `logits_hook` run through. What needs a driver is stood in for: the generators (CPU ones),
    the backward (zeros; its placement is autograd's), and the schedule (computed on the host by design,
    once a run)."""
    import transformers as tf
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode, unset_fake_temporarily
    real_generator, real_schedule = torch.Generator, entrgi.schedule

    def host_schedule(*a, **k):
        with unset_fake_temporarily():
            return real_schedule(*a, **k)

    class CpuGenerator(real_generator):
        def __new__(cls, device="cpu"):
            return real_generator("cpu")
    monkeypatch.setattr(torch, "Generator", CpuGenerator)
    zeros = lambda out, inputs, *a, **k: tuple(map(torch.zeros_like, inputs if isinstance(inputs, tuple) else [inputs]))
    monkeypatch.setattr(torch.autograd, "grad", zeros)
    monkeypatch.setattr(entrgi, "schedule", host_schedule)
    V, Vr, L, P, K = 384, 360, 16, 6, 2
    with FakeTensorMode(allow_non_fake_inputs=False), torch.device("cuda"):
        dllm = entrgi.bidirectional(tf.Qwen2ForCausalLM(tf.Qwen2Config(
            vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False, shift_logits=True))).eval().requires_grad_(False)
        rm = tf.Qwen3ForSequenceClassification(tf.Qwen3Config(
            vocab_size=Vr, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, num_labels=1, pad_token_id=0)).eval().requires_grad_(False)
        embedding = rm.get_input_embeddings().weight[torch.arange(V) % Vr]
        mask, end = V - 1, V - 2
        denoiser = entrgi.make_denoiser(dllm, [[1, 2, 3, 4, 5, 6], [7, 8]], K, L)
        reward = entrgi.make_reward(rm, [[1, 2, 3], [4, 5]], [[6, 7], [8, 9]], K, [end], [10])
        for method, rule, top_p in (("entrgi", "entropy", 0.95), ("aps", "probability", 0.9),
                                    ("soft", "margin", 1.0), ("bon", "random", 0.6)):
            cfg = entrgi.Config(method=method, K=K, T=8, L=L, M=2, remasking=rule, top_p=top_p, block_length=8)
            steps = []
            with pytest.raises(DataDependentOutputException):         # the one read, after the loop: fake
                entrgi.sample(denoiser, reward, embedding, [0, 1], mask, [end], cfg,   # tensors hold no value
                              on_step=lambda k, y, likely: steps.append(y))
            assert len(steps) == 8 and steps[-1].device.type == "cuda"
        hook = entrgi.logits_hook(reward, embedding, entrgi.Config(K=K, T=8, L=L, M=2), mask, P, None)
        out = hook(0, torch.full((2 * K, P + L), mask), torch.randn(2 * K, P + L, V))
        assert out.device.type == "cuda"


@pytest.mark.slow
def test_compiled_models_give_the_eager_rewards_and_gradients(dream_dir, rm_dir):
    """torch.compile on both models (compile_models, as --compile does; fp32, CPU): the denoiser's logits and
    the reward with its gradient in e agree with eager within 1e-4, for two prompts of other lengths."""
    (model, tok), (rm, rm_tok) = entrgi.load_dllm(dream_dir), entrgi.load_reward_model(rm_dir)
    eos = entrgi.end_ids(tok)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 200, (4, 8), generator=g)
    E = rm.get_input_embeddings().weight
    e = (E[y] + 0.1 * torch.randn(4, 8, E.shape[1], generator=g)).requires_grad_(True)
    results = []
    for compiled in (False, True):
        if compiled:
            entrgi.compile_models(model, rm)
        for prompts in (["Write a poem about the sea", "Hello"], ["Why?", "One two three four five"]):
            ids = [entrgi.dllm_prompt_ids(tok, p) for p in prompts]
            R = entrgi.make_reward(rm, *entrgi.rm_slots(rm_tok, prompts), 2, eos)(e, y)
            grad, = torch.autograd.grad(R.sum(), e)
            results.append((entrgi.make_denoiser(model, ids, 2, 8)(y), R, grad))
    assert "compile" in type(model.forward).__name__.lower() or hasattr(model.forward, "_torchdynamo_orig_callable")
    for eager, compiled in zip(results[:2], results[2:]):
        for a, b in zip(eager, compiled):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
