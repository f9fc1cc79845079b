"""Tests of entrgi.py's algorithm on small checkpoints built in the session (conftest.py), CPU, offline:
the denoiser, the relaxation, the nucleus sampler, the reward bridge, the guided step, the sampler,
the benchmark. The command line is in test_cli.py."""

import json
import math
import os

import pytest
import torch

import entrgi

PROMPTS = ["Write a poem about the sea", "Hello"]


@pytest.fixture(scope="module")
def dllm(dream_dir):
    return entrgi.load_dllm(dream_dir)


@pytest.fixture(scope="module")
def rm(rm_dir):
    return entrgi.load_reward_model(rm_dir)


@pytest.fixture(scope="module")
def embedding(dllm, rm):
    (model, tok), (rm_model, rm_tok) = dllm, rm
    ids, _ = entrgi.vocab_map(tok, rm_tok, model.config.vocab_size, verbose=False)
    return rm_model.get_input_embeddings().weight[ids]


def run_sampler(dllm, rm, embedding, method, seeds, L=8, T=8, M=3, lr=0.5, reward=None, K=4, on_step=None, **kw):
    (model, tok), (rm_model, rm_tok) = dllm, rm
    prompts = PROMPTS[: len(seeds)]
    cfg = entrgi.Config(method=method, K=K, T=T, L=L, M=M, lr=lr, **kw).check()
    eos = entrgi.end_ids(tok)
    denoiser = entrgi.make_denoiser(model, [entrgi.dllm_prompt_ids(tok, p) for p in prompts], K, L)
    reward = reward or entrgi.make_reward(rm_model, *entrgi.rm_slots(rm_tok, prompts), K, eos)
    return entrgi.sample(denoiser, reward, embedding, seeds, tok.mask_token_id, eos, cfg, on_step=on_step)

# -----------------------------------------------------------------------------
# the denoiser: Dream through Qwen2 with a bidirectional mask, logits shifted


def test_denoiser_attends_both_ways_and_is_shifted(dllm):
    model, tok = dllm
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tok) - 4, (1, 12), generator=g)
    valid = torch.ones_like(ids, dtype=torch.bool)
    aligned = entrgi.dllm_logits(model, ids, valid)                             # (1, 12, V)
    bias = entrgi.attention_bias(valid, causal=False, dtype=model.dtype)
    raw = model(input_ids=ids, attention_mask=bias).logits
    torch.testing.assert_close(aligned[:, 1:], raw[:, :-1], rtol=0, atol=0)    # token i from output i - 1
    torch.testing.assert_close(aligned[:, 0], raw[:, 0], rtol=0, atol=0)       # position 0 keeps its own
    torch.testing.assert_close(entrgi.dllm_logits(model, ids, valid, last=5), aligned[:, -5:], rtol=1e-5, atol=1e-5)
    # a later token changes the logits of every earlier position: attention is bidirectional
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % (len(tok) - 4)
    diff = (entrgi.dllm_logits(model, changed, valid) - aligned).abs().amax(-1)[0]
    assert (diff[:-1] > 1e-4).all()
    # left padding changes nothing for the padded row, beyond the first token's own prediction
    # (the shift takes it from a padding position; the sampler only reads response positions)
    padded = torch.cat([torch.full((1, 3), tok.pad_token_id), ids], 1)
    pvalid = torch.cat([torch.zeros(1, 3, dtype=torch.bool), valid], 1)
    both = entrgi.dllm_logits(model, torch.cat([padded, torch.cat([ids[:, :3], ids], 1)]),
                              torch.cat([pvalid, torch.ones_like(pvalid)]))
    torch.testing.assert_close(both[:1, 4:], aligned[:, 1:], rtol=1e-5, atol=1e-5)


def test_load_dllm_keeps_weights_and_freezes(dllm, dream_dir):
    from safetensors.torch import load_file
    model, tok = dllm
    saved = load_file(os.path.join(dream_dir, "model.safetensors"))
    for name, p in model.named_parameters():
        assert torch.equal(p, saved[name]), name
        assert not p.requires_grad
    assert tok.mask_token == "<|mask|>" and tok.mask_token_id == model.config.mask_token_id
    assert all(not layer.self_attn.is_causal for layer in model.model.layers)

# -----------------------------------------------------------------------------
# the relaxation against hand-computed values


def relax_case():
    psi = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)).requires_grad_(True)
    E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    return psi, E


@pytest.mark.parametrize("method", ["soft", "aps", "entrgi"])
def test_relax_values_and_gradient(method):
    psi, E = relax_case()
    # q = (.1, .2, .3, .4); top_p = 0.3 keeps the top token alone: the hard sample is token 3, E_3 = (2, 0)
    e, _, _, w = entrgi.relax(psi, E, method, temperature=1.0, top_p=0.3, generator=torch.Generator().manual_seed(0))
    soft = torch.tensor([1.2, 0.5], dtype=torch.float64)
    H = -sum(p * math.log(p) for p in (0.1, 0.2, 0.3, 0.4))
    w_expected = {"soft": 0.0, "aps": 1.0, "entrgi": H / math.log(4)}[method]
    assert w.item() == pytest.approx(w_expected, abs=1e-12)
    expected = (1 - w_expected) * soft + w_expected * torch.tensor([2.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(e[0], expected, rtol=0, atol=1e-12)
    # gradient always the soft path's: d(e . c)/d psi_i = q_i (E_i . c - e_soft . c)
    (e[0] @ torch.tensor([1.0, -1.0], dtype=torch.float64)).backward()
    torch.testing.assert_close(psi.grad[0], torch.tensor([0.03, -0.34, -0.21, 0.52], dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_relax_temperature_shapes_and_entropy_source():
    g = torch.Generator().manual_seed(1)
    psi = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    E = torch.randn(7, 4, generator=g, dtype=torch.float64)
    e, _, _, w = entrgi.relax(psi, E, "entrgi", 0.5, 1.0, torch.Generator().manual_seed(0))
    assert e.shape == (3, 5, 4) and w.shape == (3, 5)
    q = torch.softmax(psi / 0.5, -1)
    torch.testing.assert_close(w, -(q * q.log()).sum(-1) / math.log(7))          # the paper: H(softmax(psi / tau))
    *_, w_model = entrgi.relax(psi, E, "entrgi", 0.5, 1.0, torch.Generator().manual_seed(0), entropy_from="model")
    p = torch.softmax(psi, -1)
    torch.testing.assert_close(w_model, -(p * p.log()).sum(-1) / math.log(7))    # the scripts: H(softmax(psi))
    assert (w_model > w).all()                                  # tau < 1 sharpens q: its entropy is lower
    e_soft, *_ = entrgi.relax(psi, E, "soft", 0.5, 1.0, None)
    torch.testing.assert_close(e_soft, q @ E)

# -----------------------------------------------------------------------------
# the nucleus sampler: exact draws, nothing read back


def nucleus(q, top_p):
    """The nucleus distribution, by sorting, in float64: a token stays while the mass of the tokens
    more likely than it is <= top_p (tied tokens together)."""
    q = q.double()
    s = q.sort(descending=True).values
    least = s[((s.cumsum(0) - s) <= top_p).sum() - 1]
    p = torch.where(q >= least, q, 0)
    return p / p.sum()


def chi_square(draws, p, V):
    """Pearson's statistic of the draws against p, bins with expected count < 20 merged; its degrees
    of freedom; and the draws that fell where p is 0."""
    n = len(draws)
    counts = torch.bincount(draws, minlength=V).double()
    small = n * p < 20
    observed = torch.cat([counts[~small], counts[small & (p > 0)].sum().view(1)])
    expected = torch.cat([n * p[~small], n * p[small].sum().view(1)])
    keep = expected > 0
    stat = ((observed - expected)[keep] ** 2 / expected[keep]).sum().item()
    return stat, int(keep.sum()) - 1, counts[p == 0].sum().item()


def chi_square_limit(df, z=4.75):
    """Wilson-Hilferty: the chi-square quantile at a normal z (4.75: a false alarm in a million)."""
    if df < 1:
        return math.inf                             # one bin: the statistic is 0
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


V = 48
_g = torch.Generator().manual_seed(11)
ROWS = {"flat": torch.softmax(0.1 * torch.randn(V, generator=_g), -1),       # the nucleus is most of the vocabulary
        "medium": torch.softmax(1.5 * torch.randn(V, generator=_g), -1),
        "peaked": torch.softmax(torch.cat([torch.tensor([6.0, 4.5]), torch.randn(V - 2, generator=_g)]), -1),
        "ties": torch.tensor([0.25, 0.25] + [0.125] * 4 + [0.0] * (V - 6))}    # equal tokens straddle 0.6


@pytest.mark.slow
@pytest.mark.parametrize("top_p", [0.6, 0.95, 1.0])
def test_top_p_sample_is_the_exact_nucleus_distribution(top_p):
    """One million draws per row shape, all rows in one batch (each row its own distribution): Pearson's
    chi-square against the nucleus distribution stays under its one-in-a-million quantile, no token
    outside the nucleus is ever drawn, and the same draws reject a sampler 1% off (0.01 of the mass
    moved between the two most likely tokens): the test sees a 1% error."""
    n = 1_000_000
    q = torch.stack(list(ROWS.values())).repeat(n, 1)                  # (4n, V) rows of four kinds, interleaved
    x = entrgi.top_p_sample(q, top_p, torch.Generator().manual_seed(int(top_p * 100))).view(n, len(ROWS))
    for j, (name, row) in enumerate(ROWS.items()):
        p = nucleus(row, top_p)
        stat, df, outside = chi_square(x[:, j], p, V)
        assert outside == 0, (name, outside)
        assert stat < chi_square_limit(df), (name, stat, df)
        top2 = p.topk(2).indices
        off = p.clone()
        off[top2[0]] -= 0.01
        off[top2[1]] += 0.01
        stat_off, df_off, _ = chi_square(x[:, j], off, V)
        assert stat_off > chi_square_limit(df_off), (name, stat_off, df_off)


def test_top_p_sample_keeps_tied_tokens_together_and_never_draws_zero_mass():
    q = ROWS["ties"].repeat(20_000, 1)
    x = entrgi.top_p_sample(q, 0.6, torch.Generator().manual_seed(0))
    assert set(x.tolist()) == set(range(6))                            # 0.5 lies above the 0.125s: all four stay
    q = torch.softmax(torch.tensor([0.0, -math.inf, 1.0, -math.inf]), -1).repeat(20_000, 1)
    assert set(entrgi.top_p_sample(q, 1.0, torch.Generator().manual_seed(0)).tolist()) == {0, 2}


def test_top_p_sample_rows_use_their_own_generator():
    """With one generator per prompt, a prompt's draws do not depend on the prompts beside it."""
    q = torch.softmax(torch.randn(6, 5, 40, generator=torch.Generator().manual_seed(0)), -1)    # 3 prompts x K = 2
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    both = entrgi.top_p_sample(q, 0.9, gens([7, 8, 9]))
    assert torch.equal(entrgi.top_p_sample(q[2:4], 0.9, gens([8])), both[2:4])
    assert not torch.equal(both[:2], both[2:4])

# -----------------------------------------------------------------------------
# the reward bridge


def test_vocab_map_on_overlapping_tokenizers(dllm, rm):
    import warnings
    (model, tok), (_, rm_tok) = dllm, rm
    ids, overlap = entrgi.vocab_map(tok, rm_tok, model.config.vocab_size, verbose=False)
    assert ids.shape == (model.config.vocab_size,)
    rm_vocab, found = rm_tok.get_vocab(), 0
    for i, t in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        if t in rm_vocab:
            assert ids[i] == rm_vocab[t]
            found += 1
        else:
            assert ids[i] == rm_tok.eos_token_id          # the test RM has no unk token
    assert (ids[len(tok):] == rm_tok.eos_token_id).all()  # the padded rows past the tokenizer
    assert overlap == pytest.approx(found / len(tok)) and 0.9 <= overlap < 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entrgi.vocab_map(tok, rm_tok, model.config.vocab_size, verbose=False)   # above 90%: no warning
    with pytest.warns(UserWarning, match="exist in the reward model's vocabulary"):
        _, back = entrgi.vocab_map(rm_tok, tok, len(rm_tok), verbose=False)     # the other way round: 83%
    assert back < 0.9


def test_text_reward_is_padding_invariant(rm):
    rm_model, rm_tok = rm
    prompts = ["Hello", "Write a poem about the sea, please, with many words in it", "Hi"]
    responses = ["The sea is calm.", "ok", "Numbers: one two three four five six seven eight nine ten."]
    batch = entrgi.score_texts(rm_model, rm_tok, prompts, responses)
    alone = torch.cat([entrgi.score_texts(rm_model, rm_tok, [p], [r]) for p, r in zip(prompts, responses)])
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-5)                 # fp32
    assert batch.std() > 0.1                                                   # the scores do differ


def test_embedding_reward_equals_text_reward_and_ignores_what_follows_the_end(rm):
    """The slot holds RM token ids here (end id: the RM's eos), junk after each response's end."""
    rm_model, rm_tok = rm
    E = rm_model.get_input_embeddings().weight
    responses = ["The sea is calm.", "Numbers: one two three"]
    rows = [rm_tok(r, add_special_tokens=False)["input_ids"] for r in responses]
    L = max(map(len, rows)) + 4
    slot = torch.randint(0, 300, (2, L), generator=torch.Generator().manual_seed(0))
    for b, r in enumerate(rows):
        slot[b, : len(r)] = torch.tensor(r)
        slot[b, len(r)] = rm_tok.eos_token_id
    with torch.no_grad():
        R = entrgi.make_reward(rm_model, *entrgi.rm_slots(rm_tok, PROMPTS), 1, [rm_tok.eos_token_id])(E[slot], slot)
    text = entrgi.score_texts(rm_model, rm_tok, PROMPTS, responses)
    torch.testing.assert_close(R, text, rtol=0, atol=1e-5)


def test_reward_with_its_cached_prefix_equals_the_whole_chat_row_by_row(rm):
    """R and its gradient in e, from make_reward (the prefix's keys and values computed once, the rows past each
    end hidden by the attention mask), equal those of the whole chat computed row by row without a cache:
    2 prompts x K = 2 rows of L = 12 ending at 3, 5, 9 and nowhere, embeddings off the tokens."""
    rm_model, rm_tok = rm
    E = rm_model.get_input_embeddings().weight
    g = torch.Generator().manual_seed(0)
    L, end = 12, rm_tok.eos_token_id
    prefixes, suffixes = entrgi.rm_slots(rm_tok, PROMPTS)
    reward = entrgi.make_reward(rm_model, prefixes, suffixes, 2, [end])
    tokens = torch.randint(0, 300, (4, L), generator=g)
    for row, at in enumerate((3, 5, 9)):
        tokens[row, at] = end
    e = (E[tokens] + 0.1 * torch.randn(4, L, E.shape[1], generator=g)).requires_grad_(True)
    R = reward(e, tokens)
    grad, = torch.autograd.grad(R.sum(), e)
    for row in range(4):
        p, s = (torch.tensor(ids[row // 2]) for ids in (prefixes, suffixes))
        x = torch.cat([E[p], e[row], E[s]])[None]
        seen = entrgi.reads(tokens[row:row + 1], torch.tensor([end]))[0]
        valid = torch.cat([torch.ones(len(p), dtype=torch.bool), seen, torch.ones(len(s), dtype=torch.bool)])
        R_full = entrgi.rm_score(rm_model, entrgi.hidden(rm_model, x, valid[None]))
        grad_full, = torch.autograd.grad(R_full.sum(), e)
        torch.testing.assert_close(R[row], R_full[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(grad[row], grad_full[row], rtol=0, atol=1e-5)
    assert (grad[0, 4:] == 0).all() and (grad[3] != 0).any()              # nothing past an end is read


def test_reads_stops_at_the_first_end_and_skips_leading_lead_tokens():
    y = torch.tensor([[5, 6, 1, 7, 1], [1, 5, 5, 5, 5], [5, 5, 5, 5, 5], [3, 3, 5, 3, 1], [3, 3, 3, 3, 3]])
    end, lead = torch.tensor([1, 2]), torch.tensor([3])
    assert entrgi.reads(y, end).int().tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0],
                                                   [1, 1, 1, 1, 1]]
    assert entrgi.reads(y, end, lead).int().tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1],
                                                         [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]

# -----------------------------------------------------------------------------
# the guided step and the sampler


def test_guide_is_adam_on_the_reward():
    """guide against the textbook loop: autograd through softmax and torch.optim.Adam, float64; the same
    under torch.no_grad (guide opens autograd itself), the logits left as they were."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3, 6, generator=g, dtype=torch.float64)           # (N, m, V) at the masked positions
    E = torch.randn(6, 5, generator=g, dtype=torch.float64)
    c = torch.randn(5, generator=g, dtype=torch.float64)
    end = torch.tensor([5])
    reward = lambda e, tokens: (torch.tanh(e @ c) * entrgi.reads(tokens, end)).sum(-1) + e.pow(2).sum((1, 2)) * 0.1
    y = torch.tensor([[2, 0, 0, 0]] * 3)                                       # 0 = the mask id here
    idx = torch.tensor([[1, 2, 3]] * 3)
    before = logits.clone()
    psi, skipped = entrgi.guide(logits, y, idx, reward, E, None, method="soft", M=4, lr=0.3, temperature=0.7)
    with torch.no_grad():
        again, _ = entrgi.guide(logits, y, idx, reward, E, None, method="soft", M=4, lr=0.3, temperature=0.7)
    assert torch.equal(again, psi) and torch.equal(logits, before)
    ref = logits.clone().requires_grad_(True)
    adam = torch.optim.Adam([ref], lr=0.3)
    for _ in range(4):
        e = torch.cat([E[y[:, :1]], torch.softmax(ref / 0.7, -1) @ E], 1)
        tokens = torch.cat([y[:, :1], ref.detach().argmax(-1)], 1)
        adam.zero_grad()
        (-reward(e, tokens).sum()).backward()
        adam.step()
    torch.testing.assert_close(psi, ref.detach(), rtol=1e-10, atol=1e-10)
    assert skipped.item() == 0 and not torch.equal(psi, logits)


def transcribed_top_p(p, top_p, u):
    """One position's draw, transcribed from top_p_sample's docstring: the tokens sorted by probability
    (ties in vocabulary order), the nucleus kept, the first whose cumulative mass passes u times the
    nucleus's mass."""
    order = sorted(range(len(p)), key=lambda i: -p[i].item())
    kept = nucleus(p, top_p)
    cdf = torch.cumsum(kept[order], 0)
    return order[min(int((cdf <= u * cdf[-1]).sum()), int((kept > 0).sum()) - 1)]


def test_unguided_sampler_follows_algorithm_1(dllm, rm, embedding):
    """The vectorized sampler at M = 0 against a plain per-row, per-position transcription."""
    model, tok = dllm
    K, L, T, tau, top_p, seed = 3, 6, 4, 0.7, 0.95, 5
    y, _ = run_sampler(dllm, rm, embedding, "bon", [seed], L=L, T=T, K=K)
    denoiser = entrgi.make_denoiser(model, [entrgi.dllm_prompt_ids(tok, PROMPTS[0])], K, L)
    eos, mask = entrgi.end_ids(tok), tok.mask_token_id
    gen = torch.Generator().manual_seed(seed)
    ref = torch.full((K, L), mask)
    n_masked, t = L, torch.linspace(1, 1e-3, T + 1)
    for k in range(T):
        n = n_masked if k == T - 1 else int(n_masked * (1 - t[k + 1] / t[k]))
        if n == 0:
            continue
        logits = denoiser(ref)
        logits[..., mask] = -math.inf                                    # the mask is never proposed
        u = torch.rand((K, n_masked), generator=gen)                    # a uniform per masked position, in order
        for r in range(K):
            candidates = []
            for j, l in enumerate(l for l in range(L) if ref[r, l] == mask):
                p = torch.softmax(logits[r, l] / tau, -1)
                x = transcribed_top_p(p, top_p, u[r, j])
                nz = p[p > 0]
                confidence = (nz * nz.log()).sum().item()
                candidates.append((x in eos, -confidence, l, x))
            for _, _, l, x in sorted(candidates)[:n]:                          # non-EOS first, then most confident
                ref[r, l] = x
        n_masked -= n
    assert torch.equal(y, ref)
    assert (y != mask).all()


def test_reveal_order_is_by_entropy_with_eos_last():
    """T = L = 4 reveals 0, 1, 1, 2 tokens (Dream's schedule): the most confident first, a sampled
    EOS last, even where the EOS is the most confident of all."""
    NEG = -math.inf
    logits = torch.tensor([[[10.0, 0, 0, 0, 0, NEG],      # position 0: EOS (id 0), the most certain
                            [0, 8.0, 0, 0, 0, NEG],       # position 1: token 1, certain
                            [0, 0, 2.0, 0, 0, NEG],       # position 2: token 2, the least certain
                            [0, 0, 0, 3.0, 0, NEG]]])     # position 3: token 3
    seen = []

    def denoiser(y):
        seen.append(y.clone())
        return logits.expand(y.shape[0], -1, -1)
    cfg = entrgi.Config(method="bon", K=1, T=4, L=4, temperature=1.0, top_p=0.5)   # the nucleus is the top token
    y, _ = entrgi.sample(denoiser, None, torch.randn(6, 3), [0], 5, [0], cfg)
    assert y.tolist() == [[0, 1, 2, 3]]
    assert entrgi.schedule(4, 4) == [0, 1, 1, 2] and len(seen) == 3     # a step revealing nothing is skipped
    revealed = [set((s[0] != 5).nonzero().flatten().tolist()) for s in seen + [y]]
    assert [revealed[i + 1] - revealed[i] for i in range(3)] == [{1}, {3}, {0, 2}]


def test_blocks_reveal_left_to_right_however_confident_later_blocks_are():
    """L = 8 in blocks of B = 2, T = 8: 2 steps a block. The denoiser is most confident about the LAST
    positions, so without blocks they would be revealed first; with blocks (and guidance), every step
    reveals inside its own block only, and each block is complete before the next starts."""
    L, B, T, V = 8, 2, 8, 12
    logits = torch.linspace(0.0, 9.0, L)[:, None] * torch.nn.functional.one_hot(torch.arange(L) % 10, V)   # (L, V)
    logits[:, V - 1] = -math.inf                                           # the mask id
    steps = []
    denoiser = lambda y: logits.expand(y.shape[0], -1, -1).clone()
    E = torch.randn(V, 3, generator=torch.Generator().manual_seed(0))
    reward = lambda e, tokens: e.sum((1, 2))
    for method, block_length in (("bon", None), ("entrgi", B)):
        cfg = entrgi.Config(method=method, K=2, T=T, L=L, block_length=block_length).check()
        steps.clear()
        record = lambda k, y, likely: steps.append((k, (y[0] != V - 1).nonzero().flatten().tolist()))
        y, _ = entrgi.sample(denoiser, reward, E, [0], V - 1, [V - 2], cfg, on_step=record)
        if method == "bon":
            assert steps[0][1] == [L - 1]                      # unblocked: the most confident, the last, goes first
            continue
        before = set()
        for k, revealed in steps:
            new = set(revealed) - before
            assert new and all(l // B == k // (T // (L // B)) for l in new), (k, new)
            assert all(l in before for l in range((k // 2) * B)), (k, before)
            before = set(revealed)
        assert before == set(range(L)) and (y != V - 1).all()


def test_zero_guidance_is_the_unguided_sampler_and_seeds_repeat(dllm, rm, embedding):
    bon, _ = run_sampler(dllm, rm, embedding, "bon", [3, 4])
    for method in ("entrgi", "aps", "soft"):
        assert torch.equal(run_sampler(dllm, rm, embedding, method, [3, 4], M=0)[0], bon)
        assert torch.equal(run_sampler(dllm, rm, embedding, method, [3, 4], lr=0.0)[0], bon)
    guided = run_sampler(dllm, rm, embedding, "entrgi", [3, 4])[0]
    assert torch.equal(run_sampler(dllm, rm, embedding, "entrgi", [3, 4])[0], guided)
    assert not torch.equal(guided, bon)
    assert not torch.equal(run_sampler(dllm, rm, embedding, "entrgi", [5, 6])[0], guided)
    assert not torch.equal(run_sampler(dllm, rm, embedding, "entrgi", [3, 4], entropy_from="model")[0], guided)
    # a prompt's result does not depend on the batch it is in
    alone = run_sampler(dllm, rm, embedding, "entrgi", [3])[0]
    assert torch.equal(alone, guided[:4])


def test_guide_every_k_guides_steps_0_k_2k_and_leaves_the_rest_unguided(dllm, rm, embedding):
    """With guide_every = 3 the reward is called (M = 1 times) at the revealing steps 3 and 6 only (step 0 reveals
    nothing: it is skipped whole); with guide_every past T only step 0 would be guided: the unguided sampler."""
    (_, tok), (rm_model, rm_tok) = dllm, rm
    real = entrgi.make_reward(rm_model, *entrgi.rm_slots(rm_tok, PROMPTS[:1]), 4, entrgi.end_ids(tok))
    calls = []
    counting = lambda e, tokens: calls.append("R") or real(e, tokens)
    y, _ = run_sampler(dllm, rm, embedding, "entrgi", [3], M=1, reward=counting, guide_every=3,
                       on_step=lambda k, y, likely: calls.append(k))
    revealing = [k for k, c in enumerate(entrgi.schedule(8, 8)) if c]
    assert [k for k in calls if k != "R"] == revealing and calls.count("R") == 2
    assert [calls[i + 1] for i, c in enumerate(calls) if c == "R"] == [3, 6]
    bon = run_sampler(dllm, rm, embedding, "bon", [3])[0]
    assert torch.equal(run_sampler(dllm, rm, embedding, "entrgi", [3], guide_every=9)[0], bon)
    every = run_sampler(dllm, rm, embedding, "entrgi", [3], M=1)[0]
    assert not torch.equal(y, bon) and not torch.equal(y, every)


def test_the_step_callback_changes_nothing(dllm, rm, embedding):
    calls = []
    plain, _ = run_sampler(dllm, rm, embedding, "entrgi", [3, 4])
    traced, _ = run_sampler(dllm, rm, embedding, "entrgi", [3, 4],
                            on_step=lambda k, y, likely: calls.append((k, y, likely)))
    assert torch.equal(plain, traced) and torch.equal(calls[-1][1], traced)
    assert [k for k, _, _ in calls] == [k for k, c in enumerate(entrgi.schedule(8, 8)) if c]


def test_guidance_raises_the_reward(dllm, rm, embedding):
    """EntRGi against unguided sampling from the same seeds: 12 seed pairs x 2 prompts x K = 4 = 96
    trajectories each, scored on text. Measured: mean 1.09 guided vs -0.29 unguided, a gain of 1.38 with
    a standard error of 0.31 over the seed pairs; guided above unguided for all 12 pairs. The margin
    asserted, 0.5, lies 2.8 standard errors below the gain measured."""
    (model, tok), (rm_model, rm_tok) = dllm, rm
    prompts = [p for p in PROMPTS for _ in range(4)]
    mean = {}
    for method in ("bon", "entrgi"):
        scores = []
        for s in range(12):
            y, _ = run_sampler(dllm, rm, embedding, method, [100 * s, 100 * s + 1])
            scores.append(entrgi.score_texts(rm_model, rm_tok, prompts, entrgi.decode(tok, y, entrgi.end_ids(tok))))
        mean[method] = torch.stack(scores).mean().item()
    assert mean["entrgi"] > mean["bon"] + 0.5, mean


def test_non_finite_reward_skips_the_update(dllm, rm, embedding):
    (model, tok), (rm_model, rm_tok) = dllm, rm
    real = entrgi.make_reward(rm_model, *entrgi.rm_slots(rm_tok, PROMPTS[:1]), 4, entrgi.end_ids(tok))
    nan_row0 = lambda e, tokens: real(e, tokens) * torch.tensor([math.nan, 1.0, 1.0, 1.0])
    y, skipped = run_sampler(dllm, rm, embedding, "entrgi", [9], reward=nan_row0)
    bon, _ = run_sampler(dllm, rm, embedding, "bon", [9])
    steps = sum(1 for c in entrgi.schedule(8, 8) if c)
    assert skipped.sum().item() == 3 * steps                       # row 0, each of M = 3 updates, each step
    assert torch.equal(y[0], bon[0])                            # row 0 sampled unguided
    assert (y != tok.mask_token_id).all() and not torch.equal(y[1:], bon[1:])

# -----------------------------------------------------------------------------
# the benchmark


def test_presets_are_the_papers_models():
    import transformers
    sizes = {}
    for name in ("real", "llada"):
        kind, dllm_fields, rm_fields = entrgi.PRESETS[name]
        with torch.device("meta"):
            dllm = transformers.AutoModelForCausalLM.from_config(getattr(transformers, kind)(**dllm_fields))
            rm = transformers.AutoModelForSequenceClassification.from_config(transformers.Qwen3Config(**rm_fields))
        sizes[name] = [round(sum(p.numel() for p in m.parameters()) / 1e9, 2) for m in (dllm, rm)]
    assert sizes == {"real": [7.62, 1.72], "llada": [8.02, 1.72]}   # Dream-7B, LLaDA-8B, Qwen3-1.7B + 1 label


def test_benchmark_measures_the_step_and_its_floors(capsys, monkeypatch, tmp_path):
    models = []
    make_denoiser, make_reward = entrgi.make_denoiser, entrgi.make_reward
    keep = lambda make: lambda model, *a, **k: models.append(model) or make(model, *a)
    monkeypatch.setattr(entrgi, "make_denoiser", keep(make_denoiser))
    monkeypatch.setattr(entrgi, "make_reward", keep(make_reward))
    result = entrgi.benchmark("tiny", "cpu", "float32", K=2, L=16, M=2, P=8, steps=1, layers=1, first_step=True)
    assert len(models) == 2 and not any(p.requires_grad for model in models for p in model.parameters())   # frozen
    assert all(not model.training and model.config.num_hidden_layers == 1 for model in models)
    assert result["masked"] == 16 and all(s > 0 for s in result["parts_s"].values()) and len(result["parts_s"]) == 3
    assert result["floor_s"] == pytest.approx(sum(result["parts_s"].values()))
    assert result["ratio"] == pytest.approx(result["total_s"] / result["floor_s"])
    assert result["top_p_draw_s"] > 0 and result["softmax_s"] > 0 and result["weights_gib"] > 0
    assert result["peak_beyond_weights_gib"] is None or result["peak_beyond_weights_gib"] >= 0
    # the physical floor: FLOPs at the measured matmul rate plus vocabulary bytes at the copy bandwidth
    physical = result["step_flops"] / result["matmul_flop_s"] + result["step_vocab_bytes"] / result["copy_byte_s"]
    assert result["physical_floor_s"] == pytest.approx(physical) and result["physical_ratio"] > 0
    dllm = models[0]
    weights = sum(p.numel() for name, p in dllm.named_parameters() if "embed" not in name)
    assert result["step_flops"] >= 2 * weights * 2 * (8 + 16)              # at least the dLLM's forward
    assert result["step_vocab_bytes"] >= 2 * 16 * dllm.config.vocab_size * 4  # the logits, at least written
    assert result["host_waits_one_step_run"] == 1 and result["ops_outside_models"] > 0
    entrgi.report(result)
    printed = capsys.readouterr().out
    for text in ("guided step / eager floor", "guided step / physical floor", "2 x reward forward + backward",
                 "(16 masked)", "host waits in a one-step run", "first step (warm-up)"):
        assert text in printed
    assert "compiling" not in printed                                        # nothing was compiled
    kind, dllm_fields, rm_fields = entrgi.PRESETS["tiny"]                       # a preset of one's own
    custom = entrgi.benchmark((kind, {**dllm_fields, "hidden_size": 32}, rm_fields), "cpu", "float32", K=2, L=8, M=1,
                              P=4, steps=1)
    assert custom["preset"] == "custom" and custom["ratio"] > 0
    out = tmp_path / "bench.json"
    entrgi.main(["--benchmark", "tiny", "--device", "cpu", "--samples", "2", "--max-new-tokens", "8", "--steps",
                 "8", "--benchmark-steps", "1", "--benchmark-layers", "1", "--output", str(out)])
    written = json.loads(out.read_text())
    assert written["preset"] == "tiny" and written["L"] == 8 and written["host_waits_one_step_run"] == 1


# -----------------------------------------------------------------------------
# the pieces people copy stand alone


def test_guide_and_relax_run_without_config_and_under_no_grad():
    """What a copier calls: guide with the paper's keywords only, inside torch.no_grad (as Dream's generate
    runs), and relax alone; the caller's logits unchanged."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, generator=g)
    E = torch.randn(6, 4, generator=g)
    y, idx = torch.tensor([[5, 0, 0, 0]] * 2), torch.tensor([[1, 2, 3]] * 2)
    reward = lambda e, tokens: e.sum((1, 2))
    before = logits.clone()
    with torch.no_grad():
        psi, skipped = entrgi.guide(logits, y, idx, reward, E, torch.Generator().manual_seed(1), M=2, lr=0.3)
        e, _, _, w = entrgi.relax(psi, E, "entrgi", 0.7, 0.95, torch.Generator().manual_seed(2))
    assert torch.equal(logits, before) and not torch.equal(psi, before) and skipped.item() == 0
    assert e.shape == (2, 3, 4) and ((0 <= w) & (w <= 1)).all()


COPIED = ["relax", "entropy", "top_p_sample", "nucleus", "uniform", "expect", "guide", "sample", "schedule",
          "confidence", "logits_hook", "make_reward", "rm_score", "score_texts", "reads", "attention_bias",
          "cached", "chats", "hidden", "make_loglik_reward", "f32", "rm_slots", "rm_chat", "Config", "most_confident",
          "reveal_counts",
          "stripped_ids", "vocab_map", "dllm_logits", "make_denoiser", "masked_logits"]


def test_the_method_is_a_contiguous_stretch_that_uses_nothing_below_it():
    """Everything above the line that opens "what runs the method" (Config, sections 1-4) names
    nothing defined below it: a user copies that stretch, with the imports, and nothing else."""
    import ast
    with open(entrgi.__file__, encoding="utf-8") as f:
        source = f.read()
    cut = source.index("# What runs the method, not part of it")
    tree = ast.parse(source)
    line = source[:cut].count("\n") + 1
    below = {getattr(n, "name", None) or getattr(n.targets[0], "id", None)
             for n in tree.body if n.lineno > line and isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign))}
    used = set()
    for top in (n for n in tree.body if n.lineno < line):
        local = {a.arg for n in ast.walk(top) if isinstance(n, ast.arguments)
                 for a in n.args + n.kwonlyargs + n.posonlyargs}
        local |= {n.id for n in ast.walk(top) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        used |= {n.id for n in ast.walk(top) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - local
    assert below and not used & below, used & below
    assert {"relax", "guide", "sample", "make_reward", "logits_hook"} <= {
        n.name for n in tree.body if n.lineno < line and isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("name", COPIED)
def test_a_copied_piece_uses_nothing_of_the_command_line(name):
    import inspect
    source = inspect.getsource(getattr(entrgi, name))
    for word in ("InputError", "WriteError", "args.", "argparse", "sys.exit", "parser"):
        assert word not in source, (name, word)


def test_bad_settings_raise_value_error_not_the_command_line_s():
    with pytest.raises(ValueError, match=r"K must be int in \[1, 65536\], got 0") as err:
        entrgi.Config(K=0).check()
    assert type(err.value) is ValueError
    with pytest.raises(ValueError, match="method must be entrgi, aps or soft"):
        entrgi.relax(torch.zeros(1, 3), torch.zeros(3, 2), "hard", 1.0, 1.0, None)


def test_importing_entrgi_changes_nothing():
    """No transformers import, no logging filter, nothing printed, at import."""
    import subprocess
    import sys
    code = ("import logging, sys; import entrgi; "
            "print('transformers' in sys.modules, logging.getLogger('transformers.modeling_layers').filters)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    assert out.stdout.strip() == "False []" and out.stderr == ""


def test_the_memory_trace_counts_what_a_real_run_allocates(capsys):
    """The first step's memory, traced on fake tensors, equals the same count made on real tensors (tiny
    preset, float32); at the real size it runs without memory and reports the paper's models."""
    fake = entrgi.memory_trace("tiny", K=2, L=16, M=2, P=8, dtype=torch.float32)
    real = entrgi.memory_trace("tiny", K=2, L=16, M=2, P=8, dtype=torch.float32, fake=False)
    assert fake == real and fake["step_peak_gib"] > 2 * 16 * 384 * 4 / 2**30       # at least the logits
    entrgi.main(["--benchmark", "real", "--benchmark-memory"])
    printed = capsys.readouterr().out
    assert "weights 17.39 GiB + E^R 0.58 GiB + the step's peak" in printed
    loglik = entrgi.memory_trace("real", reward="loglik")                     # Qwen3-1.7B, a causal LM
    total = loglik["weights_gib"] + loglik["embedding_gib"] + loglik["step_peak_gib"]
    assert loglik["weights_gib"] == pytest.approx(17.39, abs=0.005) and total < 22.0   # a 24 GB card's 22.5 - 0.5
