"""The owners' samplers: Dream's diffusion_generate and LLaDA's generate, their reveal rules transcribed from
their published code (Dream's generation_utils.py, LLaDA's generate.py), against entrgi.sample with the
matching --remasking / --schedule / --no-eos-last; and EntRGi as a logits hook inside a Dream-style loop."""

import math

import pytest
import torch
import torch.nn.functional as F

import entrgi
from test_entrgi import chi_square_limit, nucleus as nucleus_distribution

V, MASK, L = 4, 4, 4                     # 4 tokens and the mask: 4^4 = 256 possible responses
_g = torch.Generator().manual_seed(3)
BASE = torch.randn(L, V + 1, generator=_g)
PAIR = 1.5 * torch.randn(L, L, V, V + 1, generator=_g)     # a revealed token at j moves the logits at l
BASE[:, MASK] = -math.inf                                   # the mask is never proposed (entrgi.sample's rule)


def denoiser(y):
    """(N, L) -> (N, L, V + 1) logits that depend strongly on the revealed tokens: the order of revealing matters."""
    revealed = F.one_hot(y, V + 1)[..., :V].float()                               # (N, L, V), 0 where masked
    return BASE + torch.einsum("njv,ljvw->nlw", revealed, PAIR)


# -----------------------------------------------------------------------------
# LLaDA's generate (ML-GSAI/LLaDA generate.py), transcribed: Gumbel-max in float64, low_confidence or random
# scores, blocks left to right with get_num_transfer_tokens' linear counts, top-k per row.

def llada_num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base, remainder = mask_num // steps, mask_num % steps
    num = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num[i, :remainder[i]] += 1
    return num


def llada_generate(model, N, steps, block_length, temperature, remasking):
    x = torch.full((N, L), MASK, dtype=torch.long)             # the prompt is empty here
    num_blocks = L // block_length
    steps = steps // num_blocks
    for b in range(num_blocks):
        num_transfer_tokens = llada_num_transfer_tokens(x[:, b * block_length:(b + 1) * block_length] == MASK, steps)
        for i in range(steps):
            mask_index = x == MASK
            logits = model(x)
            noise = torch.rand(logits.shape, dtype=torch.float64)
            x0 = torch.argmax(logits.double().exp() / (-torch.log(noise)) ** temperature, dim=-1)
            if remasking == "low_confidence":
                x0_p = torch.gather(F.softmax(logits.double(), dim=-1), -1, x0.unsqueeze(-1)).squeeze(-1)
            else:
                x0_p = torch.rand(x0.shape, dtype=torch.float64)
            x0_p[:, (b + 1) * block_length:] = -math.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -math.inf)
            k = num_transfer_tokens[:, i]
            assert (k == k[0]).all()                               # every row alike: LLaDA's per-row top-k, at once
            transfer = torch.zeros_like(x0, dtype=torch.bool).scatter(1, confidence.topk(int(k[0]), -1).indices, True)
            x[transfer] = x0[transfer]
    return x


# -----------------------------------------------------------------------------
# Dream's diffusion_generate (its generation_utils.py), transcribed: sample_tokens, the schedule, top-k reveal,
# the logits hook called after the (already shifted) logits.

def dream_top_p_logits(logits, top_p):
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cumulative_probs > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = 0
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_indices, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def dream_sample_tokens(logits, temperature, top_p, margin_confidence=False, neg_entropy=False):
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = dream_top_p_logits(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    x0 = torch.distributions.Categorical(probs=probs).sample()
    confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    if margin_confidence:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


def dream_generate(model, x, steps, temperature, top_p, alg, mask_id=MASK, hook=lambda step, x, logits: logits,
                   eps=1e-3):
    """x (N, prompt + L): the prompt, then masks. model(x) -> logits already shifted (row i predicts token i)."""
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        logits = hook(i, x, model(x))
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        confidence, x0 = dream_sample_tokens(mask_logits, temperature, top_p, margin_confidence=alg == "topk_margin",
                                             neg_entropy=alg == "entropy")
        num_mask_token = mask_index.sum() / mask_index.shape[0]
        number_transfer_tokens = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
        full_confidence[mask_index] = confidence
        if number_transfer_tokens > 0:
            _, transfer_index = torch.topk(full_confidence, number_transfer_tokens)
            x_ = torch.zeros_like(x) + mask_id
            x_[mask_index] = x0.clone()
            row_indices = torch.arange(x.size(0)).unsqueeze(1).expand_as(transfer_index)
            x[row_indices, transfer_index] = x_[row_indices, transfer_index]
    return x


# -----------------------------------------------------------------------------
# the same distribution of responses


def two_sample_chi_square(a, b):
    """Responses (n, L) from two samplers of the same size n: the homogeneity statistic over the 256 responses
    (responses seen fewer than 20 times in all pooled in one bin) and its degrees of freedom."""
    code = lambda y: (y * V ** torch.arange(L)).sum(1)
    ca, cb = (torch.bincount(code(y), minlength=V ** L).double() for y in (a, b))
    small = ca + cb < 20
    ca, cb = torch.cat([ca[~small], ca[small].sum().view(1)]), torch.cat([cb[~small], cb[small].sum().view(1)])
    keep = ca + cb > 0
    stat = ((ca - cb)[keep] ** 2 / (ca + cb)[keep]).sum().item()
    return stat, int(keep.sum()) - 1


def ours(n, seed, T, **settings):
    cfg = entrgi.Config(method="bon", K=n, T=T, L=L, eos_last=False, **settings).check()
    return entrgi.sample(denoiser, None, torch.zeros(V + 1, 1), [seed], MASK, [0], cfg)[0]


N = 40_000
CASES = [   # (the owner's sampler, ours reproducing it, ours with another rule: must be told apart)
    ("llada low_confidence, blocks of 2", lambda: llada_generate(denoiser, N, 4, 2, 1.0, "low_confidence"),
     dict(T=4, remasking="probability", schedule="linear", block_length=2, temperature=1.0, top_p=1.0),
     dict(remasking="random")),
    ("llada low_confidence, one block", lambda: llada_generate(denoiser, N, 3, 4, 1.0, "low_confidence"),
     dict(T=3, remasking="probability", schedule="linear", temperature=1.0, top_p=1.0), dict(schedule="dream")),
    ("llada random, blocks of 2", lambda: llada_generate(denoiser, N, 4, 2, 1.0, "random"),
     dict(T=4, remasking="random", schedule="linear", block_length=2, temperature=1.0, top_p=1.0),
     dict(remasking="probability")),
    ("dream maskgit_plus", lambda: dream_generate(denoiser, torch.full((N, L), MASK), 4, 0.7, 1.0, "maskgit_plus"),
     dict(T=4, remasking="probability", temperature=0.7, top_p=1.0), dict(remasking="margin")),
    ("dream topk_margin", lambda: dream_generate(denoiser, torch.full((N, L), MASK), 4, 0.7, 1.0, "topk_margin"),
     dict(T=4, remasking="margin", temperature=0.7, top_p=1.0), dict(remasking="entropy")),
    ("dream entropy", lambda: dream_generate(denoiser, torch.full((N, L), MASK), 4, 0.7, 1.0, "entropy"),
     dict(T=4, remasking="entropy", temperature=0.7, top_p=1.0), dict(remasking="margin")),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, owners, settings, other", CASES, ids=[c[0] for c in CASES])
def test_unguided_sampler_draws_the_owners_distribution(name, owners, settings, other):
    """40,000 responses from the owner's transcribed sampler (its own randomness: Gumbel-max in float64, or
    torch's Categorical) and 40,000 from entrgi.sample: the chi-square homogeneity statistic stays under its
    one-in-a-million quantile; against entrgi.sample with another rule it lies far above it, so the test
    tells the rules apart."""
    torch.manual_seed(0)
    theirs = owners()
    assert (theirs != MASK).all()
    stat, df = two_sample_chi_square(theirs, ours(N, 1, **settings))
    assert stat < chi_square_limit(df), (name, stat, df)
    stat, df = two_sample_chi_square(theirs, ours(N, 2, **{**settings, **other}))
    assert stat > 3 * chi_square_limit(df), (name, other, stat, df)


def test_linear_schedule_is_llada_s_counts():
    for T, m in ((4, 2), (3, 4), (5, 12), (8, 3), (1, 7)):
        expected = llada_num_transfer_tokens(torch.ones(1, m, dtype=torch.bool), T)[0].tolist()
        assert entrgi.schedule(T, m, "linear") == expected
    assert entrgi.schedule(4, 4) == [0, 1, 1, 2]                # Dream's, the default


def test_confidence_rules_read_q_after_top_p():
    """probability and margin on q restricted to its nucleus and renormalised (Dream's top_p_logits), against
    a sort; flat rows, whose nucleus holds most of the V = 300 tokens, and peaked ones."""
    g = torch.Generator().manual_seed(0)
    logits = torch.cat([0.05 * torch.randn(3, 300, generator=g), 6 * torch.randn(3, 300, generator=g)])
    q = torch.softmax(logits, -1).view(2, 3, 300)                          # (N, m, V)
    for top_p in (0.3, 0.9, 1.0):
        kept = torch.stack([nucleus_distribution(row, top_p) for row in q.view(-1, 300)]).view(2, 3, 300)
        probability = entrgi.confidence("probability", q, top_p, None)
        torch.testing.assert_close(probability.double(), kept, rtol=1e-5, atol=1e-7)
        top2 = kept.topk(2, -1).values
        margin = entrgi.confidence("margin", q, top_p, None)
        torch.testing.assert_close(margin.double(), top2[..., 0] - top2[..., 1], rtol=1e-5, atol=1e-7)
        filtered = torch.softmax(dream_top_p_logits(logits.double(), top_p), -1).view(2, 3, 300)   # Dream's
        torch.testing.assert_close(probability.double(), filtered, rtol=1e-5, atol=1e-7)
    assert (entrgi.nucleus(q[0], 0.9)[2].squeeze(-1) < q[0].max(-1).values).all()   # the flat rows: many tokens in
    H = -(q * q.log()).sum(-1)
    torch.testing.assert_close(entrgi.confidence("entropy", q, 0.9, None), -H)
    u = entrgi.confidence("random", q, 0.9, [torch.Generator().manual_seed(s) for s in (1, 2)])
    assert u.shape == (2, 3) and ((0 <= u) & (u < 1)).all()


@pytest.mark.parametrize("rule", entrgi.REMASKING)
def test_a_prompt_s_result_does_not_depend_on_its_batch_under_every_rule(rule):
    def run(seeds):
        cfg = entrgi.Config(method="bon", K=3, T=4, L=L, remasking=rule, top_p=0.8)
        return entrgi.sample(denoiser, None, torch.zeros(V + 1, 1), seeds, MASK, [0], cfg)[0]
    both = run([3, 4])
    assert torch.equal(run([4]), both[3:]) and torch.equal(run([3]), both[:3])


def test_end_token_last_is_a_switch():
    """A denoiser sure of the end token (id 0) at position 0: with eos_last it is revealed at the last step;
    without it, first."""
    logits = torch.zeros(L, V + 1)
    logits[:, MASK] = -math.inf
    logits[0, 0] = 30.0
    for eos_last, step in ((True, 3), (False, 1)):
        revealed = []
        cfg = entrgi.Config(method="bon", K=2, T=4, L=L, top_p=1.0, eos_last=eos_last)
        entrgi.sample(lambda y: logits.expand(y.shape[0], -1, -1), None, torch.zeros(V + 1, 1), [0], MASK, [0], cfg,
                      on_step=lambda k, y, likely: revealed.append((k, (y[:, 0] != MASK).all().item())))
        assert min(k for k, done in revealed if done) == step


# -----------------------------------------------------------------------------
# EntRGi as a logits hook in a Dream-style loop (the transcription above)


PROMPT = "Hello"


@pytest.fixture(scope="module")
def hooked(dream_dir, rm_dir):
    """The test Dream model and reward model, wired as a user of Dream's own generate would wire them."""
    (model, tok), (rm, rm_tok) = entrgi.load_dllm(dream_dir), entrgi.load_reward_model(rm_dir)
    prompt = entrgi.dllm_prompt_ids(tok, PROMPT)
    embedding = rm.get_input_embeddings().weight[entrgi.vocab_map(tok, rm_tok, model.config.vocab_size, False)[0]]
    forward = lambda x: entrgi.dllm_logits(model, x, torch.ones_like(x, dtype=torch.bool))     # shifted, as Dream's
    return model, tok, rm, rm_tok, prompt, embedding, forward


def run_dream_loop(hooked, seed, hook_cfg=None, K=8, L=8, T=8, on_hook=None):
    model, tok, rm, rm_tok, prompt, embedding, forward = hooked
    x = torch.cat([torch.tensor([prompt] * K), torch.full((K, L), tok.mask_token_id)], 1)
    hook = lambda step, x, logits: logits
    if hook_cfg is not None:
        reward = entrgi.make_reward(rm, *entrgi.rm_slots(rm_tok, [PROMPT]), K, entrgi.end_ids(tok))
        hook = entrgi.logits_hook(reward, embedding, hook_cfg, tok.mask_token_id, len(prompt),
                                  torch.Generator().manual_seed(seed))
    if on_hook:
        hook = on_hook(hook)
    torch.manual_seed(seed)
    with torch.no_grad():                                                  # as Dream's generate runs
        x = dream_generate(forward, x, T, 0.7, 0.95, "entropy", tok.mask_token_id, hook)
    texts = entrgi.decode(tok, x[:, len(prompt):], entrgi.end_ids(tok))
    return entrgi.score_texts(rm, rm_tok, [PROMPT] * K, texts)


def test_logits_hook_raises_the_reward_in_dream_s_loop(hooked):
    """The same loop (entropy order, tau 0.7, top-p 0.95, T = L = 8), seeds 0-15, K = 8, with and without the
    hook (EntRGi, M = 3, eta = 0.5): the mean text reward of 128 responses each. Measured: -1.29 without,
    -0.42 with, a gain of 0.87 with a standard error of 0.21; the margin asserted, 0.3, lies 2.7 standard
    errors below it."""
    plain = torch.cat([run_dream_loop(hooked, s) for s in range(16)])
    guided = torch.cat([run_dream_loop(hooked, s, entrgi.Config(K=8, T=8, L=8)) for s in range(16)])
    assert guided.mean() > plain.mean() + 0.3, (plain.mean(), guided.mean())


def test_logits_hook_moves_only_masked_response_rows(hooked):
    """What the hook returns: the prompt's rows and the revealed rows exactly as given, the masked rows changed;
    at unguided steps (guide_every) and for bon, everything as given."""
    tok = hooked[1]
    P = len(hooked[4])
    seen = []

    def spy(hook):
        def wrapped(step, x, logits):
            before = logits.clone()
            after = hook(step, x, logits)
            seen.append((step, x[:, P:] == tok.mask_token_id, before, after))
            return after
        return wrapped
    run_dream_loop(hooked, 0, entrgi.Config(K=8, T=8, L=8, guide_every=3), on_hook=spy)
    assert [step for step, *_ in seen] == list(range(8))
    for step, masked, before, after in seen:
        same = (before == after).all(-1)                                      # (N, P + L) rows untouched
        assert same[:, :P].all() and same[:, P:][~masked].all()
        assert (~same[:, P:][masked]).any() if step % 3 == 0 else same.all(), step   # (rows past an end: no gradient)
    seen.clear()
    run_dream_loop(hooked, 0, entrgi.Config(method="bon", K=8, T=8, L=8), on_hook=spy)
    assert all(torch.equal(before, after) for _, _, before, after in seen)


def test_logits_hook_pins_revealed_rows_exactly(hooked):
    """The hook runs guide on every response row, the revealed ones pinned at their tokens; for the masked rows
    that is guide on those rows alone (the soft relaxation draws nothing, so the two can be compared exactly)."""
    model, tok, rm, rm_tok, prompt, embedding, forward = hooked
    K, L, P = 4, 8, len(prompt)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, len(tok) - 4, (K, L), generator=g)
    masked = torch.rand(K, L, generator=g).argsort(1)[:, :5]                     # 5 masked positions a row
    y = y.scatter(1, masked, tok.mask_token_id)
    x = torch.cat([torch.tensor([prompt] * K), y], 1)
    cfg = entrgi.Config(method="soft", K=K, T=8, L=L)
    reward = entrgi.make_reward(rm, *entrgi.rm_slots(rm_tok, [PROMPT]), K, entrgi.end_ids(tok))
    logits = forward(x)
    hooked_logits = entrgi.logits_hook(reward, embedding, cfg, tok.mask_token_id, P, None)(0, x, logits.clone())
    idx = masked.sort(1).values
    at = logits[:, P:].gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))
    alone, _ = entrgi.guide(at, y, idx, reward, embedding, None, "soft", cfg.M, cfg.lr, cfg.temperature)
    torch.testing.assert_close(hooked_logits[:, P:].gather(1, idx[..., None].expand_as(alone)), alone,
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone, logits[:, P:].gather(1, idx[..., None].expand_as(alone)))
