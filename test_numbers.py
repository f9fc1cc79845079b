"""The numbers the method is handed, whatever they are: every public function of the method on float32, bfloat16 and
float16 inputs draws exactly the distribution of the float32 softmax of the values it was handed; values that are not
numbers end in one line naming the step and the callable, never in an index error; every grad mode runs."""

import math

import pytest
import torch

import entrgi
from test_entrgi import ROWS, chi_square, chi_square_limit, nucleus

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
V = 48
LOGITS = torch.stack([row.log() for row in ROWS.values()])          # (4, V): the four row kinds, as logits


def assert_draws(x, p, n_kinds):
    """Draws x (n, n_kinds) of n_kinds distributions p (n_kinds, V): each passes the exactness test's
    chi-square (its one-in-a-million quantile), none outside its support."""
    for j in range(n_kinds):
        stat, df, outside = chi_square(x[:, j], p[j], V)
        assert outside == 0 and stat < chi_square_limit(df), (j, stat, chi_square_limit(df), outside)


def reference(logits, temperature=1.0, top_p=0.95, mask=None):
    """The float32 softmax of the values handed (logits in their dtype), less the mask token, in its nucleus."""
    logits = logits.float() / temperature
    if mask is not None:
        logits[..., mask] = -math.inf
    return torch.stack([nucleus(q, top_p) for q in torch.softmax(logits, -1)])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_distribution_is_drawn_as_handed(dtype):
    """The quick part's check: 200,000 draws of the peaked row handed in half precision (where a sort's running sums
    in that precision drew 600 times past the limit, and outside the nucleus)."""
    q = ROWS["peaked"].to(dtype)
    x = entrgi.top_p_sample(q.repeat(200_000, 1), 1.0, torch.Generator().manual_seed(0))
    assert_draws(x[:, None], nucleus(q.float(), 1.0)[None], 1)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_drawing_function_draws_the_float32_softmax_of_what_it_is_handed(dtype):
    """250,000 draws of each of the four row kinds (a million per function and dtype), from logits or probabilities
    handed in `dtype`: top_p_sample, relax (its hard draw), sample unguided and guided (a reward of zero gradient
    leaves psi as the logits were) and the hook (whose zero-gradient output is its input, in the caller's dtype)."""
    n, tau, top_p = 250_000, 0.7, 0.95
    logits = LOGITS.to(dtype)
    x = entrgi.top_p_sample(torch.softmax(logits.float(), -1).to(dtype).repeat(n, 1, 1), top_p,
                            torch.Generator().manual_seed(1))
    assert_draws(x, reference(torch.softmax(logits.float(), -1).to(dtype).float().log(), 1.0, top_p), 4)
    E = torch.randn(V, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    _, _, x, _ = entrgi.relax(logits.repeat(n, 1, 1), E, "aps", tau, top_p, torch.Generator().manual_seed(2))
    assert_draws(x, reference(logits, tau, top_p), 4)
    zero_gradient = lambda e, tokens: (e * 0).sum((1, 2)).float()
    for method in ("bon", "entrgi"):
        cfg = entrgi.Config(method=method, K=n // 10, T=1, L=4, M=1, temperature=tau, top_p=top_p)
        y, _ = entrgi.sample(lambda y: logits.expand(len(y), -1, -1), zero_gradient, E, list(range(10)), V - 1,
                             [], cfg)
        assert_draws(y, reference(logits, tau, top_p, mask=V - 1), 4)
    hook = entrgi.logits_hook(zero_gradient, E, entrgi.Config(K=2, L=4, T=4, M=2), V - 1, 1,
                              torch.Generator().manual_seed(3))
    tokens = torch.full((2, 5), V - 1)
    handed = torch.cat([torch.zeros(1, V, dtype=dtype), logits]).expand(2, -1, -1)
    out = hook(0, tokens, handed.clone())
    assert out.dtype == dtype and torch.equal(out, handed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_probabilities_sums_and_orders_are_float32_whatever_the_dtype(dtype):
    """entropy, nucleus, confidence and guide on half-precision inputs give exactly their float32 results on the
    same values (the values handed, upcast)."""
    q = torch.softmax(torch.randn(3, 5, V, generator=torch.Generator().manual_seed(0)), -1).to(dtype)
    assert torch.equal(entrgi.entropy(q), entrgi.entropy(q.float()))
    for got, want in zip(entrgi.nucleus(q, 0.9), entrgi.nucleus(q.float(), 0.9)):
        assert torch.equal(got, want)
    for rule in ("entropy", "probability", "margin"):
        assert torch.equal(entrgi.confidence(rule, q, 0.9, None), entrgi.confidence(rule, q.float(), 0.9, None))
    E = torch.randn(V, 3, generator=torch.Generator().manual_seed(1))
    y, idx = torch.full((3, 5), V - 1), torch.arange(5).expand(3, -1)
    reward = lambda e, tokens: torch.tanh(e).sum((1, 2))
    gens = lambda: torch.Generator().manual_seed(2)
    half, _ = entrgi.guide(q.log(), y, idx, reward, E, gens())
    full, _ = entrgi.guide(q.log().float(), y, idx, reward, E, gens())
    assert half.dtype == torch.float32 and torch.equal(half, full)


# -----------------------------------------------------------------------------
# values that are not numbers


def breaks_at(step, value, V=12, L=6, rows=(1,)):
    """A denoiser whose logits hold `value` in some rows from call `step` (from 0) on."""
    calls = []
    base = torch.randn(L, V, generator=torch.Generator().manual_seed(0))

    def denoiser(y):
        logits = base.expand(len(y), -1, -1).clone()
        if len(calls) >= step:
            logits[list(rows), :, :] = value if value != "all -inf" else -math.inf
        calls.append(len(calls))
        return logits
    return denoiser


@pytest.mark.parametrize("value", [math.nan, math.inf, "all -inf"], ids=["nan", "inf", "all-inf"])
@pytest.mark.parametrize("method, rule", [("bon", "entropy"), ("entrgi", "probability"), ("aps", "margin"),
                                          ("soft", "random")])
def test_logits_that_are_not_numbers_are_refused_naming_the_step(value, method, rule):
    """NaN, +inf, or a row of -inf from the denoiser at its third call (T = L = 6: the third step that reveals):
    one FloatingPointError after the loop naming the denoiser and the step; never an index error (on CUDA, a
    device assert)."""
    V = 12
    cfg = entrgi.Config(method=method, K=2, T=6, L=6, M=2, remasking=rule)
    reward = lambda e, tokens: torch.tanh(e).sum((1, 2))
    step = [k for k, count in enumerate(entrgi.schedule(6, 6)) if count][2]
    with pytest.raises(FloatingPointError, match=rf"denoiser: NaN or inf logits at step {step}$"):
        entrgi.sample(breaks_at(2, value), reward, torch.randn(V, 3), [0], V - 1, [0], cfg)


def test_rows_that_are_not_distributions_draw_valid_indices_and_guide_skips_them():
    """top_p_sample and relax on NaN rows draw an index inside the vocabulary; guide leaves such rows as they came and
    counts them; a hook call on NaN logits returns without an error, their rows unguided."""
    q = torch.full((4, 7), math.nan)
    for top_p in (0.0, 0.5, 1.0):
        x = entrgi.top_p_sample(q, top_p, torch.Generator().manual_seed(0))
        assert ((0 <= x) & (x < 7)).all()
    E = torch.randn(7, 3)
    logits = torch.randn(2, 3, 7)
    logits[1, 0, 2] = math.nan
    y, idx = torch.full((2, 4), 6), torch.tensor([[0, 1, 2]] * 2)
    psi, skipped = entrgi.guide(logits, y, idx, lambda e, t: torch.tanh(e).sum((1, 2)), E, None, M=3)
    assert skipped.item() == 3 and torch.equal(psi[1].isnan(), logits[1].isnan()) and not psi[0].isnan().any()
    hook = entrgi.logits_hook(lambda e, t: torch.tanh(e).sum((1, 2)), E, entrgi.Config(K=2, L=4, T=4), 6, 1, None)
    handed = torch.randn(2, 5, 7)
    handed[0, 2] = math.nan
    out = hook(0, torch.full((2, 5), 6), handed.clone())
    assert out[0].isnan().any() and not out[1].isnan().any()


# -----------------------------------------------------------------------------
# the caller's grad mode


MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "enable_grad": torch.enable_grad}


def test_the_method_runs_under_every_grad_mode(dream_dir, rm_dir, lm_dir):
    """sample (with the classifier's reward and the causal LM's), guide and a hook call give the same numbers under
    no_grad, inference_mode and enable_grad, the callables made under the same mode; guide with E^R made under
    inference_mode (autograd cannot use it as it is: guide takes a copy) gives what it gives with E^R made outside."""
    (dllm, tok), (rm, rm_tok) = entrgi.load_dllm(dream_dir), entrgi.load_reward_model(rm_dir)
    lm, lm_tok = entrgi.load_reward_model(lm_dir, reward="loglik")
    eos, mask = entrgi.end_ids(tok), tok.mask_token_id
    cfg = entrgi.Config(K=2, T=4, L=4)
    vocabs = {m: entrgi.vocab_map(tok, t, dllm.config.vocab_size, verbose=False)[0] for m, t in ((rm, rm_tok),
                                                                                               (lm, lm_tok))}
    embeddings = {m: m.get_input_embeddings().weight[vocab] for m, vocab in vocabs.items()}
    results = {}
    for name, mode in MODES.items():
        with mode():
            out = []
            for model, model_tok in ((rm, rm_tok), (lm, lm_tok)):
                slots = entrgi.rm_slots(model_tok, ["Hi"])
                reward = entrgi.make_reward(model, *slots, 2, eos) if model is rm else \
                    entrgi.make_loglik_reward(model, *slots, 2, eos, vocabs[model])
                denoiser = entrgi.make_denoiser(dllm, [entrgi.dllm_prompt_ids(tok, "Hi")], 2, 4)
                E = embeddings[model]
                out.append(entrgi.sample(denoiser, reward, E, [0], mask, eos, cfg)[0])
                hook = entrgi.logits_hook(reward, E, cfg, mask, 3, torch.Generator().manual_seed(0))
                x = torch.cat([torch.full((2, 3), 5), torch.full((2, 4), mask)], 1)
                out.append(hook(0, x, torch.randn(2, 7, dllm.config.vocab_size,
                                                 generator=torch.Generator().manual_seed(1))))
        results[name] = out
    for name in ("inference_mode", "enable_grad"):
        for a, b in zip(results[name], results["no_grad"]):
            assert torch.equal(a, b), name
    reward = lambda e, t: torch.tanh(e).sum((1, 2))
    args = (torch.randn(1, 2, 10, generator=torch.Generator().manual_seed(0)), torch.zeros(1, 3, dtype=torch.long),
            torch.tensor([[0, 2]]))
    gen = lambda: torch.Generator().manual_seed(5)
    plain = entrgi.guide(*args, reward, rm.get_input_embeddings().weight[torch.arange(10)], gen())[0]
    with torch.inference_mode():
        E = rm.get_input_embeddings().weight[torch.arange(10)]          # a new tensor: an inference tensor
        assert E.is_inference() and torch.equal(entrgi.guide(*args, reward, E, gen())[0], plain)


def test_a_model_that_overflows_in_float16_ends_in_one_line_naming_dtype(dream_dir, rm_dir, tmp_path, capsys):
    """A dLLM whose logits overflow float16 (its output layer scaled by 1e7; float32 and bfloat16 hold them): with
    --dtype float16 the run ends with status 2 and one line naming the step and the flag to change, never a
    traceback; the other dtypes run."""
    import shutil
    from safetensors.torch import load_file, save_file
    big = tmp_path / "big"
    shutil.copytree(dream_dir, big)
    weights = load_file(str(big / "model.safetensors"))
    weights["lm_head.weight"] = weights["lm_head.weight"] * 1e7
    save_file(weights, str(big / "model.safetensors"), metadata={"format": "pt"})
    argv = ["--dllm", str(big), "--reward-model", rm_dir, "--prompt", "Hi", "--device", "cpu", "--samples", "2",
            "--steps", "4", "--max-new-tokens", "4"]
    with pytest.raises(SystemExit) as exit_info:
        entrgi.main([*argv, "--dtype", "float16"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert last.startswith("entrgi.py: error: denoiser: NaN or inf logits at step ") and "--dtype float32" in last
    entrgi.main([*argv, "--dtype", "bfloat16"])
