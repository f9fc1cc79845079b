"""
EntRGi: entropy-aware reward guidance for masked diffusion language models.

A. Tejaswi, L. Rout, C. Caramanis, S. Shakkottai, S. Sanghavi, "EntRGi: Entropy Aware Reward
Guidance for Diffusion Language Models", arXiv:2602.05000, 2026. At every denoising step, Adam
moves the denoiser's logits psi at the still-masked positions up a reward model's gradient; the
step samples from them. Models: Dream-v0-Instruct-7B and LLaDA-8B-Instruct through transformers'
Qwen2 and Llama classes, attending both ways; the reward model Skywork-Reward-V2-Qwen3-1.7B.

References:
1) the paper above: the relaxation's equations and Algorithm 1, named in the comments
2) APS, the straight-through baseline: Rout et al., 2025
3) Dream's sampler, generation_utils.py (Dream-org/Dream): top-p, the confidences, the schedule
4) LLaDA's sampler, generate.py (ML-GSAI/LLaDA): low-confidence remasking, blocks

The method, sections 1-4, is what a user copies: it needs torch (and transformers' public API
for the reward bridge) and nothing below it.
  1. the relaxation            2. the reward bridge        3. the guided step (lines 2-3)
  4. the sampler (Algorithm 1, lines 1-6; Dream's and LLaDA's reveal rules; the logits hook)
What runs it: 5. loading, 6. the command line, files and the trace page, 7. the benchmark.
"""

import argparse
import contextlib
import errno
import html
import inspect
import json
import math
import os
import re
import stat
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

METHODS = ("bon", "soft", "aps", "entrgi")
REMASKING = ("entropy", "probability", "margin", "random")


@dataclass
class Config:
    method: str = "entrgi"      # entrgi | aps (straight-through) | soft | bon (unguided)
    K: int = 4                  # trajectories per prompt
    T: int = 128                # denoising steps
    L: int = 128                # new tokens
    M: int = 3                  # Adam steps on psi per denoising step
    lr: float = 0.5             # eta (the authors' README; their scripts: 1.0)
    temperature: float = 0.7    # tau
    top_p: float = 0.95
    seed: int = 0
    block_length: int | None = None  # blocks revealed left to right (None: one)
    entropy_from: str = "sampling"   # w from softmax(psi / tau) | "model": softmax(psi)
    remasking: str = "entropy"  # line 5's order (`confidence`): entropy | probability
                                # | margin | random
    schedule: str = "dream"     # tokens revealed per step (`schedule`): dream | linear
    eos_last: bool = True       # a sampled end token is revealed after all others
    guide_every: int = 1        # guide steps 0, k, 2k, ... (the authors' apply_every_k)

    @property
    def guided(self):
        return self.method != "bon" and self.M > 0 and self.lr > 0

    def check(self):
        """Raise ValueError for the first setting out of its range; return self."""
        def need(ok, message):
            if not ok:
                raise ValueError(message)

        need(self.method in METHODS,
             f"unknown method {self.method!r}: choose one of {', '.join(METHODS)} or all")
        for name, least in (("K", 1), ("T", 1), ("L", 1), ("M", 0), ("guide_every", 1)):
            value = getattr(self, name)
            need(value >= least, f"{name} must be at least {least}, got {value}")
        need(math.isfinite(self.lr) and self.lr >= 0,
             f"the learning rate eta must be finite and >= 0, got {self.lr}")
        need(1e-3 <= self.temperature <= 1e3,
             f"the temperature tau must lie in [0.001, 1000], got {self.temperature}")
        need(0 < self.top_p <= 1, f"top-p must lie in (0, 1], got {self.top_p}")
        need(0 <= self.seed < 2**63, f"the seed must lie in [0, 2**63), got {self.seed}")

        choices = {"entropy_from": ("sampling", "model"), "remasking": REMASKING,
                   "schedule": ("dream", "linear")}
        for name, allowed in choices.items():
            value = getattr(self, name)
            need(value in allowed, f"{name} is one of {', '.join(allowed)}, got {value!r}")

        block = self.L if self.block_length is None else self.block_length
        need(1 <= block <= self.L and self.L % block == 0,
             f"the block length {block} must divide L = {self.L}")
        blocks = self.L // block
        need(self.T % blocks == 0,
             f"L / block length = {blocks} blocks share T = {self.T} steps: it must divide T")
        return self


# -----------------------------------------------------------------------------
# 1. The relaxation: how a masked position is fed to the reward model


def relax(logits, embedding, method, temperature, top_p, generator,
          x=None, entropy_from="sampling"):
    """The reward model's input e (..., d) at positions whose logits are
    psi (..., V), and the entropy weights w (...).
    embedding (V, d): E^R, the reward model's embeddings in the dLLM's order.

      q      = softmax(psi / tau)
      e_soft = sum_i q_i E_i                 the soft relaxation
      e_hard = E[x],  x ~ top-p(q)           a hard token
      w      = H(q) / log |V|                the entropy weight, in [0, 1]
      e      = e_soft + sg(w (e_hard - e_soft))    EntRGi; sg: stop-gradient

    e's value is (1 - w) e_soft + w e_hard; its gradient is e_soft's.
    soft: w = 0. aps (straight-through): w = 1.
    x: a hard token to hold fixed, instead of a fresh draw.
    entropy_from="model": w from softmax(psi), as the authors' scripts do.
    """
    if method not in ("soft", "aps", "entrgi"):
        raise ValueError(f"unknown relaxation {method!r}: choose entrgi, aps or soft")

    q = torch.softmax(logits.detach() / temperature, -1)     # (..., V)
    e_soft = SoftEmbedding.apply(logits, q, embedding, temperature)
    if method == "soft":
        return e_soft, torch.zeros(q.shape[:-1], device=q.device)

    with torch.no_grad():
        if x is None:
            x = top_p_sample(q, top_p, generator)
        if method == "aps":
            w = torch.ones(q.shape[:-1], device=q.device)
        elif entropy_from == "sampling":
            w = entropy(q) / math.log(q.shape[-1])
        else:
            w = entropy(torch.softmax(logits.detach(), -1)) / math.log(q.shape[-1])

    e_hard = embedding[x]                                     # (..., d)
    step = w.unsqueeze(-1).to(e_soft.dtype) * (e_hard - e_soft)
    return e_soft + step.detach(), w


class SoftEmbedding(torch.autograd.Function):
    """e_soft = q @ E with q = softmax(psi / tau), differentiable in psi.

    Plain form, left to autograd:
        e_soft = torch.softmax(psi / tau, -1) @ E
    Its backward, written out here to use one (..., V) buffer:
        d e_soft / d psi_i = q_i (E_i - e_soft) / tau
        grad_psi = q (g - <q, g>) / tau,   g = grad_e E^T
    """

    @staticmethod
    def forward(ctx, psi, q, E, tau):
        ctx.save_for_backward(q, E)
        ctx.tau = tau
        return q.to(E.dtype) @ E                              # (..., d)

    @staticmethod
    def backward(ctx, grad_e):
        q, E = ctx.saved_tensors
        g = (grad_e @ E.T).to(q.dtype)                        # (..., V)

        # g - <q, g>: the dot product as a matrix product, no (..., V) temporary
        g -= (g.unsqueeze(-2) @ q.unsqueeze(-1)).squeeze(-1)
        grad_psi = g.mul_(q).div_(ctx.tau)
        return grad_psi, None, None, None


def entropy(q):
    """H(q) over the last axis, with 0 log 0 = 0."""
    return torch.special.entr(q).sum(-1)


def nucleus(q, top_p):
    """The least probability (...) inside the top-p nucleus of each row of
    q (..., V), by sorting: a token is in the nucleus where q >= it."""
    s = q.sort(-1, descending=True).values
    inside = (s.cumsum(-1) - s) <= top_p       # the more likely mass <= top_p
    last = inside.sum(-1, keepdim=True) - 1
    return s.gather(-1, last).squeeze(-1)


def top_p_sample(q, top_p, generator, candidates=3):
    """x ~ q (..., V) restricted to its top-p nucleus (Dream's rule: the
    tokens whose more likely tokens hold at most top_p of the mass).

    Plain form, sorting every row:
        p = q * (q >= nucleus(q, top_p));   x ~ p / p.sum()
    Here, without sorting: each row draws `candidates` tokens from q and
    keeps the first inside the nucleus (rejection sampling: exact). A row
    whose candidates all miss (probability <= (1 - top_p)^candidates)
    takes the plain form. Room is kept for `fallback_rows` such rows, so
    nothing is read back to the host.
    """
    V = q.shape[-1]
    flat = q.reshape(-1, V)                                   # (n, V)
    n = flat.shape[0]
    u = uniform(n, candidates + 1, generator, q.device)      # (n, C + 1)

    # candidates x ~ q, accepted inside the nucleus
    x = inverse_cdf(flat, u[:, :-1])                          # (n, C)
    q_x = flat.gather(-1, x)
    accepted = q_x > 0
    if top_p < 1:
        accepted &= mass_above(flat, q_x) <= top_p
    first = accepted.int().argmax(-1, keepdim=True)
    out = x.gather(-1, first).squeeze(-1)                     # (n,)

    # the plain form on F rows, the rows that missed first
    missed = ~accepted.any(-1)                                # (n,)
    F = fallback_rows(n, (1 - top_p) ** candidates)
    rows = missed.int().argsort(descending=True, stable=True)[:F]
    p = flat[rows].float()                                    # (F, V)
    p = torch.where(p >= least_in_nucleus(p, top_p).unsqueeze(-1), p, 0)
    plain = inverse_cdf(p, u[rows, -1:]).squeeze(-1)
    out = out.scatter(0, rows, torch.where(missed[rows], plain, out[rows]))
    return out.view(q.shape[:-1])


def inverse_cdf(p, u, block=64):
    """x (n, C) with P(x = i) = p_i / sum(p), for rows p (n, V) >= 0 and
    uniforms u (n, C) in [0, 1).

    Plain form:
        torch.searchsorted(p.cumsum(-1), u * p.sum(-1), right=True)
    Here the cumulative sum runs over blocks of `block` tokens, then inside
    the block a draw lands in: a CPU's cumsum over |V| is slow.
    """
    n, V = p.shape
    if V <= 64 * block:                       # a small vocabulary: the plain form
        cdf = p.cumsum(-1)
        target = (u.to(cdf.dtype) * cdf[:, -1:]).contiguous()
        return torch.searchsorted(cdf, target, right=True).clamp_(max=V - 1)

    # the block each draw lands in
    cut = V - V % block
    sums = p[:, :cut].unflatten(1, (-1, block)).sum(-1)       # (n, V // block)
    rest = p[:, cut:].sum(-1, keepdim=True)                   # a last, shorter block
    sums = torch.cat([sums, rest], 1)
    cdf = sums.cumsum(-1)
    target = u.to(cdf.dtype) * cdf[:, -1:]                    # (n, C)
    j = torch.searchsorted(cdf, target, right=True)
    j = j.clamp_(max=cdf.shape[1] - 1)

    # the token inside that block
    start = j * block                                         # (n, C)
    positions = start.unsqueeze(-1) + torch.arange(block, device=p.device)
    inside = p.gather(1, positions.clamp(max=V - 1).flatten(1))
    inside = inside.view(positions.shape)                     # (n, C, block)
    inside = torch.where(positions < V, inside, 0)            # past |V|: no mass
    before = cdf.gather(1, j) - sums.gather(1, j)             # the mass before it
    rest_target = (target - before).unsqueeze(-1)
    i = torch.searchsorted(inside.cumsum(-1), rest_target, right=True)
    x = start + i.squeeze(-1).clamp_(max=block - 1)
    return x.clamp_(max=V - 1)


CPU_CACHE_BYTES = 2**22     # mass_above works in row blocks of about this size
GPU_BLOCK_BYTES = 2**31     # on a GPU: every row at once, up to this size


def mass_above(p, t):
    """sum(p[p > t]) (n, C), for rows p (n, V) and thresholds t (n, C).

    Plain form: ((p[:, None, :] > t[..., None]) * p[:, None, :]).sum(-1)
    Here one threshold at a time, in row blocks that stay in a CPU's cache.
    """
    budget = CPU_CACHE_BYTES if p.is_cpu else GPU_BLOCK_BYTES
    rows = max(1, budget // (p.shape[-1] * p.element_size()))
    above = torch.empty_like(p[:rows])                        # one reused buffer
    mass = []
    for p_r, t_r in zip(p.split(rows), t.split(rows)):
        a = above[: len(p_r)]
        per_threshold = []
        for c in range(t.shape[1]):
            torch.gt(p_r, t_r[:, c, None], out=a)
            per_threshold.append(torch.linalg.vecdot(p_r, a))
        mass.append(torch.stack(per_threshold, -1))
    return torch.cat(mass)


FP32_INF_BITS = 0x7F800000  # +inf as an int32: fp32 bits order like values >= 0


def least_in_nucleus(p, top_p):
    """nucleus(p, top_p) for fp32 rows p (r, V), without sorting.

    The least t with sum(p[p > t]) <= top_p, by bisection on the bit
    patterns of fp32 (for t >= 0 they order as the values do): 31 halvings
    find it exactly.
    """
    lo = torch.zeros(p.shape[0], dtype=torch.int32, device=p.device)
    hi = torch.full_like(lo, FP32_INF_BITS)     # the mass above lo: > top_p; hi: <=
    for _ in range(31):
        mid = lo + (hi - lo) // 2
        t = mid.view(torch.float32)[:, None]
        inside = mass_above(p, t).squeeze(-1) <= top_p
        hi = torch.where(inside, mid, hi)
        lo = torch.where(inside, lo, mid)
    return hi.view(torch.float32)


def fallback_rows(n, p_miss, rare=1e-12):
    """The least F such that more than F of n rows, each missing with
    probability at most p_miss, miss at once less often than `rare`.
    Chernoff's bound: P(X >= F) <= exp(-mu) (e mu / F)^F, mu = n p_miss.
    """
    mu = n * p_miss
    F = math.floor(mu) + 1

    def log_bound(F):
        return -mu + F * (1 + math.log(max(mu, 1e-300) / F))

    while F < n and log_bound(F) > math.log(rare):
        F += 1
    return min(F, n)


def uniform(rows, cols, generator, device):
    """(rows, cols) uniforms in [0, 1). generator: one, or one per prompt,
    each drawing its own block of rows (see `sample`)."""
    generators = generator if isinstance(generator, (list, tuple)) else [generator]
    per = rows // len(generators)
    draws = [torch.rand((per, cols), generator=g, device=device) for g in generators]
    return torch.cat(draws)


# -----------------------------------------------------------------------------
# 2. The reward bridge: dLLM tokens -> reward-model embeddings -> R


def vocab_map(dllm_tokenizer, rm_tokenizer, vocab_size, verbose=True):
    """The reward model's id of each dLLM token (vocab_size,), matched by
    identical string (else unk or eos), and the fraction found."""
    rm_vocab = rm_tokenizer.get_vocab()
    tokens = dllm_tokenizer.convert_ids_to_tokens(list(range(len(dllm_tokenizer))))
    ids = torch.full((vocab_size,), -1, dtype=torch.long)
    ids[: len(tokens)] = torch.tensor([rm_vocab.get(t, -1) for t in tokens])
    found = int((ids >= 0).sum())
    share = found / len(tokens)

    if verbose:
        print(f"vocabulary map: {found} of the dLLM's {len(tokens)} tokens ({share:.2%}) "
              "found in the reward model's vocabulary", file=sys.stderr)
    if found < 0.9 * len(tokens):
        warnings.warn(f"only {share:.1%} of the dLLM's tokens exist in the reward model's "
                      "vocabulary: the reward model will see many unknown tokens", stacklevel=2)

    fallbacks = (rm_tokenizer.unk_token_id, rm_tokenizer.eos_token_id,
                 rm_tokenizer.pad_token_id, 0)
    fallback = next(i for i in fallbacks if i is not None)
    return ids.masked_fill(ids < 0, fallback), share


def rm_chat(rm_tokenizer, prompt, response):
    """The reward model's chat text for one (prompt, response) pair."""
    turns = [{"role": "user", "content": prompt},
             {"role": "assistant", "content": response}]
    return rm_tokenizer.apply_chat_template(turns, tokenize=False)


SLOT = "ENTRGIRESPONSESLOT"     # a stand-in reply, to split the chat template at


def rm_slots(rm_tokenizer, prompts):
    """The reward model's token ids before and after the reply in each
    prompt's chat: (prefixes, suffixes), a list each."""
    parts = [rm_chat(rm_tokenizer, prompt, SLOT).split(SLOT) for prompt in prompts]
    if any(len(p) != 2 or not p[1] for p in parts):
        raise ValueError("the reward model's chat template does not place the reply verbatim, "
                         "once, with text after it (where the score is read): use a reward "
                         "model whose template does")

    def ids(text):
        return rm_tokenizer(text, add_special_tokens=False)["input_ids"]

    return [ids(before) for before, _ in parts], [ids(after) for _, after in parts]


def stripped_ids(dllm_tokenizer, rm_tokenizer):
    """dLLM token ids that the reward model's chat template removes from the
    start of a reply: the newline tokens (of up to 32 newlines in a row),
    where the template strips leading newlines (Qwen3's does)."""
    if rm_chat(rm_tokenizer, "x", "\n" + SLOT) != rm_chat(rm_tokenizer, "x", SLOT):
        return []
    ids = set()
    for n in range(1, 33):
        ids.update(dllm_tokenizer("\n" * n, add_special_tokens=False)["input_ids"])
    return sorted(i for i in ids if set(dllm_tokenizer.decode([i])) == {"\n"})


def reads(tokens, end_ids, lead_ids=None):
    """(N, L) bool: the positions of tokens (N, L) a reader of the replies
    sees: those before the first end token (the chat template closes the
    turn itself), less a run of lead_ids at the start (it strips those)."""
    seen = torch.isin(tokens, end_ids).cumsum(-1) == 0
    if lead_ids is not None and len(lead_ids):
        seen &= torch.isin(tokens, lead_ids).cumprod(-1) == 0
    return seen


def left_pad(rows, pad_id, device):
    """Lists of ids -> ids (N, width), left-padded, and a bool (N, width),
    True at the real tokens."""
    width = max(map(len, rows))
    padded = [[pad_id] * (width - len(r)) + r for r in rows]
    real = [[False] * (width - len(r)) + [True] * len(r) for r in rows]
    ids = torch.tensor(padded, dtype=torch.long, device=device)
    return ids, torch.tensor(real, device=device)


def attention_bias(valid, causal, dtype, past=None):
    """valid (N, T) bool -> an additive mask (N, 1, T, P + T) that hides the
    padding keys. Every query sees itself, so no row is all hidden (no NaN).
    past (N, P) bool: cached keys in front, seen by every query."""
    T = valid.shape[1]
    allowed = valid[:, None, None, :]                         # (N, 1, 1, T) the keys
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=valid.device)
    if past is not None:
        allowed = torch.cat([past[:, None, None, :].expand(-1, 1, T, -1), allowed], -1)

    bias = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


def cache_keyword(model):
    """The name of a forward's key/value cache argument: `cache` from
    transformers 5.24, `past_key_values` before. Read from the signature
    (5.0-5.23 would swallow `cache` in **kwargs, unused)."""
    takes_cache = "cache" in inspect.signature(model.forward).parameters
    return "cache" if takes_cache else "past_key_values"


def new_cache(config, layers=None):
    """A DynamicCache, empty or holding `layers` (keys, values per layer).
    Its constructor takes the model's config from transformers 4.56 (5.x
    needs it for an empty one); before 4.56 it takes none."""
    from transformers import DynamicCache
    if layers is not None:
        return DynamicCache(layers)
    takes_config = "config" in inspect.signature(DynamicCache.__init__).parameters
    return DynamicCache(config=config) if takes_config else DynamicCache()


def rm_score(rm, e, valid, past_valid=None, past_kv=None, body=None):
    """R (N,) for the reward model's input embeddings e (N, T, d).

    valid (N, T): the real positions (padding may be anywhere but last;
    position ids count the real tokens only). past_valid (N, P) and
    past_kv (keys, values per layer): a cached prefix. R is the score head
    on the last position's hidden state, where transformers' classifier
    pools. body: rm.base_model, or a compiled form of it.
    """
    start = 0 if past_valid is None else past_valid.sum(1, keepdim=True)
    position_ids = start + (valid.cumsum(1) - 1).clamp(min=0)
    bias = attention_bias(valid, causal=True, dtype=e.dtype, past=past_valid)
    cache = {}
    if past_kv is not None:
        cache = {cache_keyword(rm.base_model): new_cache(rm.config, past_kv)}

    body = rm.base_model if body is None else body
    h = body(inputs_embeds=e, attention_mask=bias, position_ids=position_ids,
             use_cache=bool(cache), **cache)
    return rm.score(h.last_hidden_state[:, -1]).squeeze(-1).float()


def prefix_cache(rm, prefix, K):
    """The keys and values of a chat prefix (a list of ids), for K rows."""
    E = rm.get_input_embeddings().weight
    ids = torch.tensor([prefix], device=E.device)             # (1, P)
    every = torch.ones_like(ids, dtype=torch.bool)
    bias = attention_bias(every, causal=True, dtype=E.dtype)
    cache = new_cache(rm.config)
    with torch.no_grad():
        rm.base_model(inputs_embeds=E[ids], attention_mask=bias,
                      position_ids=every.cumsum(1) - 1, use_cache=True,
                      **{cache_keyword(rm.base_model): cache})
    return [(k.expand(K, -1, -1, -1), v.expand(K, -1, -1, -1)) for k, v, *_ in cache]


def make_reward(rm, prefixes, suffixes, K, end_ids, lead_ids=(), compile=False):
    """The reward callable for `sample`: reward(e, tokens, widths=None) -> R.

    e (N, n, d), tokens (N, n), N = len(prefixes) * K rows, prompt-major.
    R (N,) reads the prompt's chat prefix, then e where
    `reads(tokens, end_ids, lead_ids)`, then the suffix. n <= L: a caller
    may pass the first n positions when no row reads past them (R is the
    same); widths (host ints, one per prompt): the same, per prompt.
    Each prompt's K rows run on their own, unpadded, so a prompt's R does
    not depend on its batch. The prefixes' keys and values are computed
    once. compile: torch.compile the reward model's body (dynamic length).
    """
    E = rm.get_input_embeddings().weight
    end_ids = torch.as_tensor(end_ids, dtype=torch.long, device=E.device)
    lead_ids = torch.as_tensor(lead_ids, dtype=torch.long, device=E.device)
    body = torch.compile(rm.base_model, dynamic=True) if compile else rm.base_model

    prompts = []                          # per prompt: its prefix's cache, the suffix
    for prefix, suffix in zip(prefixes, suffixes):
        past = prefix_cache(rm, prefix, K)
        past_valid = torch.ones(K, len(prefix), dtype=torch.bool, device=E.device)
        e_suffix = E[torch.tensor(suffix, device=E.device)].expand(K, -1, -1)   # (K, S, d)
        prompts.append((past, past_valid, e_suffix))

    def reward(e, tokens, widths=None):
        R = []
        for i, (past, past_valid, e_suffix) in enumerate(prompts):
            n = e.shape[1] if widths is None else widths[i]
            rows = slice(i * K, (i + 1) * K)
            seen = reads(tokens[rows, :n], end_ids, lead_ids)      # (K, n)
            suffix_valid = torch.ones(e_suffix.shape[:2], dtype=torch.bool, device=E.device)
            e_rows = torch.cat([e[rows, :n].to(E.dtype), e_suffix], 1)   # (K, n + S, d)
            valid = torch.cat([seen, suffix_valid], 1)
            R.append(rm_score(rm, e_rows, valid, past_valid, past, body))
        return torch.cat(R)

    return reward


@torch.no_grad()
def score_texts(rm, rm_tokenizer, prompts, responses):
    """R(prompt, response) on text, tokenized by the reward model's own
    tokenizer."""
    chats = [rm_chat(rm_tokenizer, p, r) for p, r in zip(prompts, responses)]
    rows = [rm_tokenizer(chat, add_special_tokens=False)["input_ids"] for chat in chats]
    E = rm.get_input_embeddings().weight
    ids, valid = left_pad(rows, 0, E.device)      # any pad id: padding is masked out
    return rm_score(rm, E[ids], valid)            # left-padded: the last position is real


# -----------------------------------------------------------------------------
# 3. The guided step (Algorithm 1, lines 2-3)


def guide(logits, y, idx, reward, embedding, cfg, generator,
          betas=(0.9, 0.999), eps=1e-8, width=None, overwrite=False):
    """Algorithm 1, lines 2-3: M Adam steps on psi up the reward.

    logits (N, m, V) fp32: the denoiser's, at the masked positions
    idx (N, m) of y (N, L). The loss is -sum_n R_n. Returns psi and the
    number of updates whose reward or gradient was not finite (a tensor,
    not read back); those updates use a zero gradient.
    width: the reward reads the first `width` positions only (no row reads
    further); a list: one width per prompt, as reward(e, tokens, widths).
    overwrite: build psi in the logits' own memory (one tensor fewer).
    """
    # line 2: psi <- the logits at the masked positions (the dLLM stays frozen)
    psi = logits.detach() if overwrite else logits.detach().clone()
    psi = psi.contiguous().requires_grad_(True)
    moment1 = torch.zeros_like(psi)                           # Adam's moments
    moment2 = torch.zeros_like(psi)
    skipped = torch.zeros((), dtype=torch.long, device=psi.device)

    # the reward model reads E^R[token] where revealed, e where masked
    e_known = embedding[y.scatter(1, idx, 0)]                 # (N, L, d)
    at_idx = idx.unsqueeze(-1).expand(-1, -1, e_known.shape[-1])   # (N, m, d)
    n = y.shape[1]
    per_prompt = {}
    if isinstance(width, list):
        n = max(width)
        per_prompt = {"widths": width}
    elif width is not None:
        n = width

    # line 3: M Adam steps on psi
    for step in range(1, cfg.M + 1):
        e, _ = relax(psi, embedding, cfg.method, cfg.temperature, cfg.top_p, generator,
                     entropy_from=cfg.entropy_from)
        e_all = e_known.scatter(1, at_idx, e)                 # (N, L, d)
        tokens = y.scatter(1, idx, psi.detach().argmax(-1))   # masked: argmax psi
        R = reward(e_all[:, :n], tokens[:, :n], **per_prompt)    # (N,)
        g, = torch.autograd.grad(-R.sum(), psi)

        with torch.no_grad():
            finite = (R + g.sum((1, 2))).isfinite()          # (N,) rows to update
            skipped += (~finite).sum()
            g.masked_fill_(~finite[:, None, None], 0.0)
            adam_step(psi, g, moment1, moment2, step, cfg.lr, betas, eps)
        del g                                     # freed before the next forward

    return psi.detach(), skipped


def adam_step(psi, g, moment1, moment2, step, lr, betas, eps):
    """One step of torch.optim.Adam on psi, in place; g's memory then holds
    the denominator. Plain form, t = step:

        moment1 = b1 moment1 + (1 - b1) g
        moment2 = b2 moment2 + (1 - b2) g^2
        psi -= lr (moment1 / (1 - b1^t)) / (sqrt(moment2 / (1 - b2^t)) + eps)
    """
    moment1.lerp_(g, 1 - betas[0])
    moment2.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])

    c1 = 1 - betas[0] ** step                             # the bias corrections
    c2 = math.sqrt(1 - betas[1] ** step)
    denominator = torch.sqrt(moment2, out=g).add_(eps * c2)   # sqrt(moment2) + eps c2
    psi.addcdiv_(moment1, denominator, value=-lr * c2 / c1)


# -----------------------------------------------------------------------------
# 4. The sampler (Algorithm 1)


GUIDE_STREAM = 7919  # guidance's generators are seeded seed + this (a prime)
EOS_LAST = 1e4       # lowers a drawn end token's confidence below all others


def sample(denoiser, reward, embedding, seeds, mask_id, eos_ids, cfg,
           progress=False, y0=None, on_step=None):
    """Algorithm 1: y (N, L), N = len(seeds) prompts x K, and the number of
    guidance updates skipped. denoiser(y) -> logits (N, L, V), row l
    predicting token l; reward(e (N, n, d), tokens (N, n)) -> R (N,);
    embedding (V, d): E^R. y0: the start (default: all masked);
    on_step(k, y, likely) follows each step that reveals tokens."""
    device = embedding.device
    gen_x = [torch.Generator(device).manual_seed(s) for s in seeds]    # one per prompt
    gen_guide = [torch.Generator(device).manual_seed(s + GUIDE_STREAM) for s in seeds]
    eos_ids = torch.as_tensor(eos_ids, dtype=torch.long, device=device)
    y = y0.clone() if y0 is not None else torch.full(
        (len(seeds) * cfg.K, cfg.L), mask_id, dtype=torch.long, device=device)
    counts = reveal_counts(y0, mask_id, cfg)          # tokens revealed at each step
    read_end = read_limit(eos_ids, cfg.L, cfg.K, len(seeds))
    skipped = torch.zeros((), dtype=torch.long, device=device)

    for k in tqdm(range(cfg.T), f"{cfg.method} denoising", file=sys.stderr, disable=not progress):
        if counts[k] == 0:                   # nothing to reveal: skip the step
            continue
        m = sum(counts[k:])                  # masked positions, as many in every row
        idx = (y != mask_id).int().argsort(dim=1, stable=True)[:, :m]    # (N, m)

        # line 1: the denoiser's logits at the masked positions
        logits = masked_logits(denoiser, y, idx, mask_id)    # (N, m, V)
        q = torch.softmax(logits / cfg.temperature, -1)      # the unguided step
        order = confidence(cfg.remasking, q, cfg.top_p, gen_x)   # line 5 reads it
        likely = y.scatter(1, idx, logits.argmax(-1)) if on_step else None

        # lines 2-3: guidance moves psi; q follows it
        if cfg.guided and k % cfg.guide_every == 0:
            del q                            # guide needs the memory
            psi, s = guide(logits, y, idx, reward, embedding, cfg, gen_guide,
                           width=read_end(takes_widths(reward)), overwrite=True)
            skipped += s
            q = torch.softmax(psi / cfg.temperature, -1)

        # line 4: candidates x0 ~ q, top-p
        x0 = top_p_sample(q, cfg.top_p, gen_x)                # (N, m)

        # line 5: the positions to reveal, the most confident first
        reveal = most_confident(order, x0, idx, counts[k], k, eos_ids, cfg)

        # line 6: write the revealed tokens; they never change again
        y = y.scatter(1, idx.gather(1, reveal), x0.gather(1, reveal))
        read_end.update(y)
        if on_step:
            on_step(k, y, likely)

    return y, skipped


def masked_logits(denoiser, y, idx, mask_id):
    """The denoiser's logits (N, m, V) at the masked positions idx (N, m),
    the mask token's set to -inf (a mask id past |V|, as the toy's, has
    no logit)."""
    logits = denoiser(y)                                      # (N, L, V)
    at = idx.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    logits = logits.gather(1, at)                             # a copy
    if mask_id < logits.shape[-1]:
        logits[..., mask_id] = -math.inf
    return logits


def most_confident(order, x0, idx, count, k, eos_ids, cfg):
    """Line 5: which `count` of the m masked positions to reveal at step k,
    as indices (N, count) into idx. The most confident by `order` (N, m);
    for "probability", order (N, m, V) is read at the token drawn. A drawn
    end token comes after all others (eos_last); only the current block."""
    if cfg.remasking == "probability":
        order = order.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    if cfg.eos_last:
        order = torch.where(torch.isin(x0, eos_ids), order - EOS_LAST, order)

    block = cfg.block_length or cfg.L
    current = k * (cfg.L // block) // cfg.T                  # blocks share T evenly
    order = order.masked_fill(idx // block != current, -math.inf)
    return order.topk(count, -1).indices


def reveal_counts(y0, mask_id, cfg):
    """The tokens revealed at each of the T steps: `schedule` in each block,
    blocks left to right. A y0 given is read on the host, once."""
    block = cfg.block_length or cfg.L
    blocks = cfg.L // block
    steps = cfg.T * block // cfg.L                            # per block
    if y0 is None:
        return [c for _ in range(blocks) for c in schedule(steps, block, cfg.schedule)]

    masked = (y0 == mask_id).view(y0.shape[0], blocks, block).sum(-1).tolist()
    if any(row != masked[0] for row in masked):
        raise ValueError("every row of y0 needs as many masked positions as the others, "
                         "in every block")
    return [c for n in masked[0] for c in schedule(steps, n, cfg.schedule)]


def takes_widths(reward):
    """Whether reward(e, tokens, widths) takes one width per prompt, as
    make_reward's does."""
    try:
        return "widths" in inspect.signature(reward).parameters
    except (TypeError, ValueError):                 # a callable without a signature
        return False


def read_limit(eos_ids, L, K, prompts):
    """How far each prompt's K rows read: limit() -> [n, ...], one per
    prompt (limit(False): their max); no row reads position n or later.

    n is the latest first end token among the prompt's rows. Revealed
    tokens never change, so a bound from an earlier step still holds.
    limit.update(y) starts copying y's bounds to the host, without waiting;
    limit() uses the update before the newest (L before any): that copy has
    long arrived, and which bounds a step uses never depends on timing.
    Under torch's deterministic algorithms limit() waits for it if it has
    not; otherwise it keeps the older bounds.
    """
    state = {"n": [L] * prompts, "pending": []}

    def limit(per_prompt=True):
        while len(state["pending"]) > 1:
            host, done = state["pending"][0]
            if done is not None and not done.query():
                if not torch.are_deterministic_algorithms_enabled():
                    break
                done.synchronize()
            state["n"] = [int(n) for n in host.numpy()]        # a host tensor
            state["pending"].pop(0)
        return state["n"] if per_prompt else max(state["n"])

    def update(y):
        ends = reads(y, eos_ids).sum(1).view(-1, K).amax(1)    # (prompts,)
        if y.is_cpu:
            state["pending"].append((ends, None))
            return
        host = torch.empty(ends.shape, dtype=ends.dtype, pin_memory=True)
        host.copy_(ends, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        state["pending"].append((host, done))

    limit.update = update
    return limit


def schedule(T, n, kind="dream"):
    """The tokens revealed at each of T steps, n in all.
    dream: floor(masked (1 - t_{k+1} / t_k)) with t = linspace(1, 1e-3, T + 1),
           the rest at the last step (Dream's).
    linear: n // T per step, one more in the first n % T (LLaDA's)."""
    if kind == "linear":
        return [n // T + (k < n % T) for k in range(T)]

    t = torch.linspace(1, 1e-3, T + 1, device="cpu")     # on the host, float32 as Dream's
    counts = []
    for k in range(T):
        masked = n - sum(counts)
        if k == T - 1:
            counts.append(masked)
        else:
            counts.append(int(masked * (1 - t[k + 1] / t[k])))
    return counts


def confidence(rule, q, top_p, generator):
    """Line 5's order (N, m), the most confident revealed first, from
    q (N, m, V), the unguided step's softmax(psi / tau):

      entropy      -H(q)                     Dream's entropy
      probability  the drawn token's q       Dream's maskgit_plus, LLaDA's
                   after top-p               low_confidence
      margin       top-1 minus top-2 of q    Dream's topk_margin
                   after top-p
      random       uniform                   LLaDA's random

    For "probability" it is (N, m, V), to be read at the token drawn.
    """
    if rule == "entropy":
        return -entropy(q)
    if rule == "random":
        return uniform(q.shape[0], q.shape[1], generator, q.device)

    # q after top-p: renormalized inside the nucleus
    least = nucleus(q, top_p).unsqueeze(-1) if top_p < 1 else 0.0
    kept = torch.where(q >= least, q, 0)
    if rule == "probability":
        return kept.div_(kept.sum(-1, keepdim=True))
    top2 = kept.topk(2, -1).values
    return (top2[..., 0] - top2[..., 1]) / kept.sum(-1)


def logits_hook(reward, embedding, cfg, mask_id, prompt_length, generator):
    """EntRGi inside a sampler of one's own, such as Dream's
    diffusion_generate (its generation_logits_hook_func):
    hook(step, tokens (N, P + L), logits (N, P + L, V)) -> logits, row i
    predicting token i. At the guided steps (0, k, 2k, ..., k =
    cfg.guide_every) the masked response rows become psi after `guide`, in
    place. The revealed rows go to guide pinned at their tokens (a one-hot q:
    no gradient), so no host sync is needed to count the masked ones.
    """
    def hook(step, tokens, logits):
        if not cfg.guided or step % cfg.guide_every:
            return logits
        P = prompt_length
        y = tokens[:, P:]                                     # (N, L) the response
        at = y[..., None]                                     # (N, L, 1)
        masked = at == mask_id

        psi = logits[:, P:].to(torch.float32, copy=True).masked_fill_(~masked, -math.inf)
        pinned = torch.where(masked, psi.gather(-1, at), 0.0)    # revealed: 0 at the token
        psi.scatter_(-1, at, pinned)
        every = torch.arange(y.shape[1], device=y.device).expand_as(y)
        with torch.enable_grad():                 # Dream's generate runs without
            psi, _ = guide(psi, y, every, reward, embedding, cfg, generator)
        logits[:, P:] = torch.where(masked, psi.to(logits.dtype), logits[:, P:])
        return logits

    return hook


# =============================================================================
# What runs the method, not part of it: loading, the command line, files, the
# trace page, the benchmark. Nothing above this line uses anything below it.
# =============================================================================


# -----------------------------------------------------------------------------
# 5. Loading: Dream and LLaDA through transformers' own classes, any sequence-classification RM


def resolve(name_or_path):
    """A local directory, or a hub name downloaded (or found in the cache): (its path, its
    config.json), once no file of it is damaged (JSON that is not JSON, a .safetensors file cut
    short): a damaged file is named."""
    path = name_or_path
    parsed = {}
    # owner/name; not ./x, ../x, /x
    hub_name = re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", name_or_path)

    if not os.path.isdir(path) and not hub_name:
        raise InputError(f"model {name_or_path!r}: no such directory here, and not a hub name "
                         "(owner/name): check the path")

    if not os.path.isdir(path):
        try:
            from huggingface_hub import snapshot_download
            path = snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja"])
        except Exception as err:
            # the hub's, the network's: all say the same to a user
            raise InputError(f"cannot use model {name_or_path!r} ({type(err).__name__}): check the "
                             "name, or the machine may be offline: pass a local directory that "
                             "holds its config.json") from None

    for file in sorted(f for f in os.listdir(path) if f.endswith((".json", ".safetensors"))):
        try:
            with open(os.path.join(path, file), "rb") as f:
                parsed[file] = json.loads(f.read()) if file.endswith(".json") else safetensors_header(f)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise InputError(f"model {name_or_path!r}: {file} is damaged "
                             f"({err}); get it again") from None
        except OSError as err:
            raise InputError(f"model {name_or_path!r}: cannot read {file}: "
                             f"{err.strerror or err}") from None

    if not isinstance(parsed.get("config.json"), dict):
        raise InputError(f"model {name_or_path!r}: {path!r} holds no config.json with "
                         "a JSON object in it")

    return path, parsed["config.json"]


def safetensors_header(f):
    """The header of a .safetensors file, its size checked against the tensors it lists (the
    weights are not read)."""
    size = os.fstat(f.fileno()).st_size
    n = int.from_bytes(f.read(8), "little")              # the header's length, then JSON

    if 8 + n > size:
        raise ValueError(f"cut short: {size} bytes, less than its header needs; an "
                         "interrupted download?")

    try:
        header = json.loads(f.read(n))
    except ValueError as err:
        raise ValueError(f"its header is not JSON: {err}") from None

    end = 8 + n + max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)

    if size < end:
        raise ValueError(f"cut short: {size} of its {end} bytes; an interrupted download?")

    return header


def loaded(name, what, load):
    """load(), or an InputError naming the model and which of its parts could
    not be loaded, and why."""
    try:
        return load()
    except Exception as err:
        # any library's error on files it could not use
        why = " ".join(str(err).split())
        raise InputError(f"cannot load the {what} of {name!r}: "
                         f"{type(err).__name__}: {why}") from None


def pick_dtype(device, dtype):
    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def bidirectional(model):
    """Dream and LLaDA attend both ways: our masks say so; no kernel may assume causal."""
    for layer in model.model.layers:
        layer.self_attn.is_causal = False
    return model


LLADA_BLOCK = {   # a LLaDA block's weights -> a Llama layer's
    "attn_norm": "input_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_norm": "post_attention_layernorm",
    "ff_proj": "mlp.gate_proj",          # LLaDA's ff_proj is the gate
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
}
# LLaDA's weight names -> LlamaForCausalLM's: regular expressions, applied in order
LLADA_WEIGHTS = {
    r"^model\.transformer\.wte\.": "model.embed_tokens.",
    r"^model\.transformer\.ln_f\.": "model.norm.",
    r"^model\.transformer\.ff_out\.": "lm_head.",
    **{r"^model\.transformer\.blocks\.(\d+)\." + theirs: r"model.layers.\1." + ours
       for theirs, ours in LLADA_BLOCK.items()},
}
LLADA_CONFIG = {   # LLaDA's config.json keys (OLMo's) -> LlamaConfig's
    "embedding_size": "vocab_size",
    "d_model": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "mlp_hidden_size": "intermediate_size",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps",
    "max_sequence_length": "max_position_embeddings",
}


def dllm_config(name, kind, raw):
    """transformers' configuration of Dream's config.json (Qwen2's keys; logits
    shifted) or LLaDA's (OLMo's)."""
    import transformers as tf
    try:
        if kind == "Dream":
            drop = ("model_type", "architectures", "auto_map")
            return tf.Qwen2Config(**{k: v for k, v in raw.items() if k not in drop}, shift_logits=True)
        return tf.LlamaConfig(**{ours: raw[theirs] for theirs, ours in LLADA_CONFIG.items()}, shift_logits=False,
                              num_key_value_heads=raw.get("n_kv_heads") or raw["n_heads"],
                              tie_word_embeddings=raw.get("weight_tying", False),
                              mask_token_id=raw.get("mask_token_id"))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"model {name!r}: config.json is no {kind} configuration "
                         f"({type(err).__name__}: {err})")


def dtype_kwarg(dtype):
    """from_pretrained's keyword for the weights' dtype: `dtype` where configs take it (4.56 on),
    else `torch_dtype` (read from the signature, not the version)."""
    import transformers as tf
    config_class = getattr(tf, "PreTrainedConfig", None) or tf.PretrainedConfig
    takes_dtype = "dtype" in inspect.signature(config_class.__init__).parameters
    return {"dtype" if takes_dtype else "torch_dtype": dtype}


# model_type -> the architectures loaded
DLLMS = {"Dream": ("DreamModel",), "llada": ("LLaDAModelLM",)}


def dllm_kind(name, raw):
    """Dream or llada, from config.json's model_type and architectures; anything
    else refused, by name."""
    kind = raw.get("model_type")
    architectures = raw.get("architectures") or []

    if kind not in DLLMS:
        raise InputError(f"{name!r} is no Dream or LLaDA diffusion LM: its config.json has "
                         f"model_type {kind!r}")

    other = [a for a in architectures if a not in DLLMS[kind]]

    if any("MoE" in a for a in other):
        raise InputError(f"{name!r} is {other[0]}, a mixture of experts (LLaDA-MoE): entrgi.py "
                         "loads the dense Dream and LLaDA models only")
    if other:
        raise InputError(f"{name!r} has model_type {kind!r} but architecture {other[0]}: entrgi.py "
                         f"loads {' or '.join(DLLMS[kind])} only")

    return kind


def load_dllm(name_or_path, device="cpu", dtype="auto"):
    """Dream or LLaDA (hub name, or directory laid out like the hub's) as transformers'
    Qwen2ForCausalLM or LlamaForCausalLM attending both ways, every weight found and used, no remote
    code: (model, tokenizer), frozen."""
    import transformers as tf
    path, raw = resolve(name_or_path)
    kind = dllm_kind(name_or_path, raw)
    mask_id = raw.get("mask_token_id")
    config = dllm_config(name_or_path, kind, raw)
    mapping = LLADA_WEIGHTS if kind == "llada" else None
    model_class = tf.Qwen2ForCausalLM if kind == "Dream" else tf.LlamaForCausalLM
    model, info = loaded(name_or_path, "weights", lambda: model_class.from_pretrained(
        path, config=config, key_mapping=mapping, output_loading_info=True, **dtype_kwarg(pick_dtype(device, dtype))))
    missing = sorted(info["missing_keys"])
    unexpected = sorted(info["unexpected_keys"])

    if missing or unexpected:
        raise InputError(f"{name_or_path!r} does not hold {kind}'s weights: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")

    # 4.x: Qwen2Tokenizer is the slow one
    qwen2_fast = getattr(tf, "Qwen2TokenizerFast", tf.Qwen2Tokenizer)
    tokenizer_class = qwen2_fast if kind == "Dream" else tf.PreTrainedTokenizerFast
    tokenizer = loaded(name_or_path, "tokenizer", lambda: tokenizer_class.from_pretrained(path))

    if not isinstance(mask_id, int) or not 0 <= mask_id < len(tokenizer):
        raise InputError(f"the tokenizer of {name_or_path!r} has no mask token (mask_token_id "
                         f"{mask_id}): a masked diffusion LM needs one")

    # LLaDA's tokenizer does not name it
    tokenizer.mask_token = tokenizer.convert_ids_to_tokens(mask_id)
    return bidirectional(model.to(device)).eval().requires_grad_(False), tokenizer


def load_reward_model(name_or_path, device="cpu", dtype="auto"):
    """Any sequence-classification reward model with one label and a chat template:
    (model, tokenizer), frozen."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    path, raw = resolve(name_or_path)

    if not any(k.endswith("ForSequenceClassification") for k in raw.get("architectures") or []):
        raise InputError(f"{name_or_path!r} is no sequence-classification reward model (its "
                         f"config.json names {raw.get('architectures')}, model_type "
                         f"{raw.get('model_type')!r})")

    model = loaded(name_or_path, "weights", lambda: AutoModelForSequenceClassification.from_pretrained(
        path, **dtype_kwarg(pick_dtype(device, dtype))))
    tokenizer = loaded(name_or_path, "tokenizer", lambda: AutoTokenizer.from_pretrained(path))

    if not tokenizer.chat_template:
        raise InputError(f"the reward model {name_or_path!r} has no chat template: it "
                         "cannot place a response")

    try:
        rm_slots(tokenizer, ["a prompt"])
    except ValueError as err:
        raise InputError(f"reward model {name_or_path!r}: {err}") from None

    if model.config.num_labels != 1:
        raise InputError(f"the reward model {name_or_path!r} has {model.config.num_labels} "
                         "labels, not one score")
    if not isinstance(getattr(model, "score", None), torch.nn.Linear):
        raise InputError(f"the reward model {name_or_path!r} ({type(model).__name__}) has no "
                         "linear `score` head on its last position, as Llama's, Qwen's and "
                         "Gemma's classifiers have")

    return model.to(device).eval().requires_grad_(False), tokenizer


def dllm_logits(model, ids, valid, last=None):
    """ids, valid (B, T) -> logits (B, T, V), or the last `last` rows alone, row i predicting token
    i: Dream predicts token i at position i - 1 (position 0 keeps its own), LLaDA at position i."""
    T = ids.shape[1]
    shift = int(getattr(model.config, "shift_logits", False))
    rows = (torch.arange(T - (last or T), T, device=ids.device) - shift).clamp(min=0)
    return model(input_ids=ids, attention_mask=attention_bias(valid, causal=False, dtype=model.dtype),
                 position_ids=(valid.cumsum(1) - 1).clamp(min=0), logits_to_keep=rows).logits


def dllm_prompt_ids(tokenizer, prompt):
    """The dLLM's chat-formatted prompt, ready for the assistant's reply."""
    turn = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_fits(model, prompts, L):
    longest = max(map(len, prompts))
    room = model.config.max_position_embeddings
    if longest + L > room:
        raise InputError(f"prompt ({longest} tokens) + L ({L}) exceeds the dLLM's {room} "
                         "positions: shorten the prompt or lower --max-new-tokens")


def make_denoiser(model, prompts, K, L, mask_id, compile=False):
    """denoiser(y (N, L)) -> (N, L, V) fp32 logits behind the prompts (K rows each), the mask never
    proposed. Each prompt's K rows run on their own, unpadded: a prompt's logits do not depend on
    the prompts beside it. compile: torch.compile the model (one shape per prompt length)."""
    check_fits(model, prompts, L)
    # (K, P) each
    prompts = [torch.tensor([p], device=model.device).expand(K, -1) for p in prompts]
    forward = torch.compile(model) if compile else model
    def denoiser(y):
        logits = []
        for prompt, y_i in zip(prompts, y.split(K)):
            ids = torch.cat([prompt, y_i], 1)
            logits.append(dllm_logits(forward, ids, torch.ones_like(ids, dtype=torch.bool), last=y.shape[1]))
        logits = torch.cat(logits).float()
        logits[..., mask_id] = -math.inf
        return logits
    return denoiser


def end_ids(tokenizer):
    """Token ids that end a response: eos, pad, and a chat turn's end (<|im_end|>,
    <|eot_id|>) where present."""
    vocab = tokenizer.get_vocab()
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id, vocab.get("<|im_end|>"), vocab.get("<|eot_id|>")}
    return sorted(ids - {None})


def decode(tokenizer, y, eos_ids):
    """(N, L) tokens -> N response strings, each cut at its first end token."""
    keep = reads(y, torch.as_tensor(eos_ids, device=y.device))
    return [tokenizer.decode(row[k].tolist(), skip_special_tokens=True) for row, k in zip(y, keep)]


# -----------------------------------------------------------------------------
# 6. The command line


class InputError(ValueError):
    """Bad input: the command line prints the message and exits with status 2."""


class WriteError(OSError):
    """A write the machine refused (a full disk): the command line prints the message
    and exits with status 74."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="entrgi.py",
                                description="EntRGi: steer a diffusion LM with a reward model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    input_flags(p.add_argument_group("prompts, models and files").add_argument)
    method_flags(p.add_argument_group("the method (the paper's symbols)").add_argument)
    run_flags(p.add_argument_group("the machine and the benchmark").add_argument)
    return p, p.parse_args(argv)


def input_flags(add):
    add("--prompt", help="the user prompt")
    add("--prompts-file",
        help="many prompts: text, one per line, or .jsonl, one JSON object per line; needs --output")
    add("--prompt-field", default="prompt",
        help="the field of a .jsonl prompts file that holds the prompt")
    add("--batch-size", type=int, default=1, help="prompts per batch (each prompt: K rows), >= 1")
    add("--dllm", default="Dream-org/Dream-v0-Instruct-7B",
        help="diffusion LM, Dream or LLaDA: hub name or directory")
    add("--reward-model", default="Skywork/Skywork-Reward-V2-Qwen3-1.7B",
        help="reward model: hub name or directory")
    add("--score-model",
        help="a second reward model, an independent judge of the final texts (default: none)")
    add("--output",
        help="FILE.jsonl: one line per prompt and method as each finishes; the same command again "
             "resumes")
    add("--trace", help="--prompt: FILE.html, a self-contained page of the denoising")


def method_flags(add):
    add("--method", default="entrgi", choices=[*METHODS, "all"],
        help="entrgi; aps (straight-through); soft (expectation); bon (best of K, unguided); all four")
    add("--samples", type=int, default=4, help="K, trajectories per prompt, >= 1")
    add("--steps", type=int, default=128, help="T, denoising steps, >= 1")
    add("--max-new-tokens", type=int, default=128, help="L, response length in tokens, >= 1")
    add("--block-length", type=int,
        help="tokens per block, blocks revealed left to right; it divides L, and the number of "
             "blocks divides T (default L: one block)")
    add("--guidance-steps", type=int, default=3, help="M, Adam steps on psi per denoising step, >= 0")
    add("--guide-every", type=int, default=1, help="guide the denoising steps 0, k, 2k, ... only, k >= 1")
    add("--lr", type=float, default=0.5, help="eta, Adam's learning rate on psi, finite, >= 0")
    add("--temperature", type=float, default=0.7, help="tau, sampling temperature, in [0.001, 1000]")
    add("--top-p", type=float, default=0.95, help="nucleus mass for sampling, in (0, 1]")
    add("--entropy-from", choices=["sampling", "model"], default="sampling",
        help="the entropy weight w from softmax(psi / tau) (sampling, the paper) or softmax(psi) "
             "(model, the scripts)")
    add("--remasking", choices=REMASKING, default="entropy",
        help="which masked positions a step reveals first")
    add("--schedule", choices=["dream", "linear"], default="dream",
        help="tokens revealed per step: dream or linear")
    add("--no-eos-last", dest="eos_last", action="store_false",
        help="reveal a sampled end token like any other")
    add("--seed", type=int, default=0,
        help="in [0, 2**63); the prompt at position i of a file gets seed + i")


def run_flags(add):
    add("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    add("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on CUDA")
    add("--compile", action="store_true",
        help="torch.compile both models' forwards (pays on a GPU; compiling takes minutes at the "
             "real size)")
    add("--deterministic", action="store_true",
        help="CUDA: deterministic kernels only (the same command gives the same tokens on the same "
             "GPU; attention runs its plain math kernel)")
    add("--benchmark", choices=list(PRESETS),
        help="time a guided step of random models of a preset's sizes")
    add("--benchmark-steps", type=int, default=3, help="repetitions of each timing, >= 1")
    add("--benchmark-layers", type=int,
        help="N layers in both models, the vocabularies and widths kept")
    add("--benchmark-first-step", action="store_true",
        help="time the first step (m = L masked), not the average one")


def configs(args):
    """One checked Config per method asked for."""
    shared = dict(K=args.samples, T=args.steps, L=args.max_new_tokens, M=args.guidance_steps, lr=args.lr,
                  temperature=args.temperature, top_p=args.top_p, seed=args.seed, block_length=args.block_length,
                  entropy_from=args.entropy_from, remasking=args.remasking, schedule=args.schedule,
                  eos_last=args.eos_last, guide_every=args.guide_every)
    try:
        methods = METHODS if args.method == "all" else [args.method]
        return [Config(method, **shared).check() for method in methods]
    except ValueError as err:
        raise InputError(str(err)) from None


def pick_device(device):
    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise InputError(f"device {device!r} is not supported: use cpu, cuda or cuda:N")
    kind = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if kind.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} was asked for but CUDA is not available "
                         "here: use --device cpu")
    if kind.type == "cuda" and kind.index is None:      # under torchrun, one GPU per process
        kind = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if kind.type == "cuda" and kind.index >= torch.cuda.device_count():
        raise InputError(f"there is no {kind}: this machine has "
                         f"{torch.cuda.device_count()} CUDA devices")
    return str(kind)


def generate(models, prompts, seeds, cfg, progress=False, on_step=None, judge=None, compile=False):
    """K responses for each prompt scored on text by the reward model (and a judge, (model,
    tokenizer), if given): one result dict per prompt. top1_score: the judge's score of the
    best_response, the one R ranks first. compile: torch.compile both models' forwards."""
    dllm, tok, rm, rm_tok, embedding = models
    eos = end_ids(tok)
    prompt_ids = [dllm_prompt_ids(tok, p) for p in prompts]
    denoiser = make_denoiser(dllm, prompt_ids, cfg.K, cfg.L, tok.mask_token_id, compile)
    reward = make_reward(rm, *rm_slots(rm_tok, prompts), cfg.K, eos, stripped_ids(tok, rm_tok), compile)
    y, skipped = sample(denoiser, reward, embedding, seeds, tok.mask_token_id, eos, cfg, progress, on_step=on_step)

    if skipped.item():
        warnings.warn(f"{skipped.item()} guidance updates skipped: the reward or its "
                      "gradient was not finite")

    texts = decode(tok, y, eos)
    results = []

    for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
        responses = texts[i * cfg.K:(i + 1) * cfg.K]
        # per prompt: no batch-mates' padding
        R = score_texts(rm, rm_tok, [prompt] * cfg.K, responses).tolist()
        best = R.index(max(R))
        scored = [{"text": t, "reward": r} for t, r in zip(responses, R)]
        results.append({"method": cfg.method, "seed": seed, "responses": scored, "best_response": responses[best],
                        "top1_reward": R[best], "avg_reward": sum(R) / len(R)})
        if judge:                                        # one more text scoring per response
            S = score_texts(*judge, [prompt] * cfg.K, responses).tolist()
            for response, s in zip(results[-1]["responses"], S):
                response["score"] = s
            results[-1].update(top1_score=S[best], avg_score=sum(S) / len(S))

    return results


def trace_page(prompt, settings, runs, traces, tokenizer):
    """A self-contained HTML page of the denoising, from the (k, y, likely) that `sample` reported:
    the methods side by side (entrgi first), each with its Top@1 and Avg@K and its best trajectory
    marked; a slider, buttons and keys over the steps; each token marked where it is not the
    unguided step's most likely token. The same run gives the same page."""
    # stable: entrgi first
    order = sorted(range(len(runs)), key=lambda i: runs[i]["method"] != "entrgi")
    columns = [method_column(runs[i], traces[i], tokenizer) for i in order]
    steps = [k for k, _, _ in traces[0]]
    fill = {"PROMPT": html.escape(prompt), "SETTINGS": settings_list(settings), "RUNS": "".join(columns),
            "STEPS": json.dumps(steps), "LAST": str(len(steps) - 1)}
    # one pass: no text read twice
    return re.sub("|".join(fill), lambda match: fill[match.group()], PAGE)


def method_column(run, trace, tokenizer):
    """One method's trajectories as HTML: the step each token came at (data-k), whether it
    differs from the unguided step's most likely token (class c), and what lies past the
    first end token (class e)."""
    # the page is built on the host
    trace = [(k, y_k.cpu(), likely.cpu()) for k, y_k, likely in trace]
    y = trace[-1][1]
    came = torch.full_like(y, -1)
    changed = torch.zeros_like(y, dtype=torch.bool)

    for k, y_k, likely in trace:
        new = (y_k != tokenizer.mask_token_id) & (came < 0)
        came[new] = k
        changed |= new & (y_k != likely)

    rewards = [r["reward"] for r in run["responses"]]
    best = rewards.index(max(rewards))
    top1 = f'Top@1 <strong>{run["top1_reward"]:.4f}</strong>'
    avg = f'Avg@{len(rewards)} <strong>{run["avg_reward"]:.4f}</strong>'
    head = f'<section><h2>{html.escape(run["method"])}</h2><p class="score">{top1} &middot; {avg}</p>'
    eos = torch.tensor(end_ids(tokenizer))
    rows = []

    for j, (row, at, marked) in enumerate(zip(y, came.tolist(), changed.tolist())):
        ids = row[: int(reads(row[None], eos).sum())].tolist()          # up to the first end token
        # dots: past the end
        pieces = token_texts(tokenizer, ids) + ["\u00b7"] * (len(at) - len(ids))
        spans = "".join(f'<span data-k="{at[l]}" class="{"c" if marked[l] else ""}{" e" if l >= len(ids) else ""}">'
                        f"{html.escape(piece)}</span>" for l, piece in enumerate(pieces))
        label = f"trajectory {j}: reward {rewards[j]:.4f}" + (" &#9733; best" if j == best else "")
        rows.append(f'<div class="{"t best" if j == best else "t"}"><strong>{label}</strong>\n{spans}</div>')

    return head + "".join(rows) + "</section>"


def token_texts(tokenizer, ids):
    """The text of each token of ids, such that they join to the decoded text: a character split
    over several tokens goes to its last token."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cut = [0]
    for n in range(1, len(ids) + 1):
        head = tokenizer.decode(ids[:n], skip_special_tokens=True)
        cut.append(max(cut[-1], len(os.path.commonprefix([head, text]))))
    return [text[u:v] for u, v in zip(cut, cut[1:])]


def settings_list(settings):
    """The run's settings as an HTML list of name-value pairs."""
    items = (f"<div><dt>{html.escape(str(name))}</dt><dd>{html.escape(json.dumps(value))}</dd></div>"
             for name, value in settings.items())
    return f'<dl class="settings">{"".join(items)}</dl>'


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>EntRGi denoising trace</title><style>
body { font: 14px/1.45 sans-serif; margin: 1em 1.5em; color: #222 }
h1 { font-size: 1.4em; margin: .2em 0 } h2 { font-size: 1.15em; margin: .3em 0 0 } .score { margin: 0 0 .4em }
.settings { display: flex; flex-wrap: wrap; gap: .2em 1.2em; margin: .4em 0; font-size: 12px; color: #555 }
.settings div { display: flex; gap: .3em; min-width: 0 } .settings dt { font-weight: bold }
.settings dd { margin: 0; overflow-wrap: anywhere }
#bar { position: sticky; top: 0; z-index: 1; background: #fff; padding: .4em 0; border-bottom: 1px solid #ccc }
#bar button { font: inherit; min-width: 2.4em } #k { width: min(40em, 60%); vertical-align: middle }
#runs { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 18em), 1fr)); gap: 1em }
#runs section { min-width: 0 }
.t { border: 1px solid #ddd; padding: .4em .6em; margin: .5em 0; white-space: pre-wrap;
     overflow-wrap: anywhere; font: 12px/1.6 monospace }
.t.best { border: 2px solid #2a7d2a } .new { background: #ffd95a } .e { color: #bbb }
.m { color: transparent !important; background: #e4e4e4 } .c:not(.m) { text-decoration: underline wavy red }
</style></head><body><h1>EntRGi denoising trace</h1><p><strong>Prompt:</strong> PROMPT</p>SETTINGS
<div id="bar"><button id="back" title="previous step (left arrow)">&#9664;</button>
<button id="play" title="play or pause (space)">play</button>
<button id="next" title="next step (right arrow)">&#9654;</button>
<input id="k" type="range" min="0" max="LAST" aria-label="step"> <span id="at"></span><br><small>
<span class="m">&emsp;&emsp;</span> masked, <span class="new">revealed now</span>, <span class="c">not the unguided
step's most likely token</span>, <span class="e">&middot;</span> after the end; keys: &larr; &rarr;, Home, End,
space</small></div>
<div id="runs">RUNS</div><script>
const steps = STEPS;
const k = document.getElementById("k");
const at = document.getElementById("at");
const playing = document.getElementById("play");
const spans = document.querySelectorAll("span[data-k]");
let timer = null;
function show(i) {
  k.value = i = Math.max(0, Math.min(steps.length - 1, i));
  at.textContent = `step ${steps[i] + 1} (${i + 1} of the ${steps.length} that reveal tokens)`;
  for (const s of spans) {
    s.classList.toggle("m", +s.dataset.k > steps[i]);
    s.classList.toggle("new", +s.dataset.k === steps[i]);
  }
}
function play() {
  if (timer !== null) {
    clearInterval(timer);
    timer = null;
    playing.textContent = "play";
    return;
  }
  if (+k.value >= steps.length - 1) show(0);
  playing.textContent = "pause";
  timer = setInterval(() => (+k.value >= steps.length - 1 ? play() : show(+k.value + 1)), 300);
}
k.addEventListener("input", () => show(+k.value));
document.getElementById("back").addEventListener("click", () => show(+k.value - 1));
document.getElementById("next").addEventListener("click", () => show(+k.value + 1));
playing.addEventListener("click", play);
document.addEventListener("keydown", (event) => {
  const moves = {ArrowLeft: +k.value - 1, ArrowRight: +k.value + 1, Home: 0, End: steps.length - 1};
  if (event.key in moves) show(moves[event.key]);
  else if (event.key === " ") play();
  else return;
  event.preventDefault();
});
show(steps.length - 1);
</script></body></html>
"""


def read_prompts(path, field="prompt"):
    """Prompt records from a text file (one prompt per line, as {field: line}) or a .jsonl file (one
    JSON object per line, its prompt in `field`, its other fields kept). A byte-order mark and CRLF
    line ends are no part of any prompt."""
    try:
        # utf-8-sig: without a leading byte-order mark
        with open(path, encoding="utf-8-sig") as f:
            lines = [(n, line) for n, line in enumerate(f.read().split("\n"), 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read --prompts-file {path!r}: {err}") from None

    records = []

    for n, line in lines:
        try:
            record = json.loads(line) if path.endswith(".jsonl") else {field: line}
        except json.JSONDecodeError:
            raise InputError(f"{path} line {n} is not JSON: "
                             "a .jsonl prompts file holds one JSON object per line") from None
        if not isinstance(record, dict) or field not in record:
            raise InputError(f'{path} line {n} has no prompt: it needs a non-empty "{field}" '
                             'field (--prompt-field)')
        if not isinstance(record[field], str):
            raise InputError(f'{path} line {n}: its "{field}" field is {type(record[field]).__name__}, not text: '
                             "a prompt is one string (--prompt-field names another field)")
        check_text(record[field], f"{path} line {n}")
        ours = sorted(set(record) & OUR_FIELDS - {field})
        if ours:
            raise InputError(f'{path} line {n} has a field "{ours[0]}", a name entrgi.py writes in each result: '
                             "rename it in the prompts file")
        records.append(record)

    if not records:
        raise InputError(f"--prompts-file {path!r} holds no prompt")

    return records


OUR_FIELDS = {"index", "method", "seed", "responses", "best_response", "top1_reward", "avg_reward", "top1_score",
              "avg_score", "settings", "summary"}   # what a result line holds besides the prompt file's own fields


def check_text(text, where):
    """Text a tokenizer can take: not empty, and valid Unicode (no lone surrogate
    from undecodable bytes)."""
    if not text.strip():
        raise InputError(f"{where}: the prompt is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = err.object[err.start:err.end]
        raise InputError(f"{where}: the prompt is not valid UTF-8 text ({ascii(bad)} at character "
                         f"{err.start}): save it as UTF-8") from None


def hold(path):
    """An exclusive lock on --output for this run (POSIX): the same command started
    twice at once is refused."""
    try:
        import fcntl
    except ImportError:                                  # no POSIX locks here: nothing to hold
        return contextlib.nullcontext()

    if not regular_file(path):
        return contextlib.nullcontext()

    f = open(path, "ab")

    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise InputError(f"--output {path!r} is being written by another run (the same command "
                         "started twice?): wait for it, or pass another --output") from None

    return f


def regular_file(path):
    """A file that can be read back and truncated (or none yet): not a pipe, a
    terminal or /dev/stdout."""
    return not os.path.exists(path) or stat.S_ISREG(os.stat(path).st_mode)


def read_output(path, prompts, field, settings):
    """The (index, method) pairs that an earlier run of this command wrote to `path`, and the byte
    length of its whole lines (a line without its newline was never finished). Refuses a file this
    command did not write."""
    # a pipe, /dev/stdout: written to, never read back
    if not regular_file(path):
        return set(), 0

    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        return set(), 0
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read --output {path!r} to resume from it: {err}") from None

    whole = text[: text.rfind("\n") + 1]
    done = set()

    for n, line in enumerate(whole.splitlines(), 1):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            r = None
        i = r.get("index") if isinstance(r, dict) else None
        if isinstance(r, dict) and "summary" in r:
            continue
        if isinstance(r, dict) and isinstance(r.get("settings"), dict) and r["settings"] != settings:
            key = next(k for k in sorted(set(settings) | set(r["settings"])) if r["settings"].get(k) != settings.get(k))
            raise InputError(f"--output {path!r} line {n} was written with {key} = "
                             f"{r['settings'].get(key)!r}, this command has {key} = "
                             f"{settings.get(key)!r}: refusing to mix them; pass another --output")
        if not (isinstance(i, int) and 0 <= i < len(prompts) and r.get(field) == prompts[i][field]
                and r.get("method") in METHODS and r.get("settings") == settings):
            raise InputError(f"--output {path!r} line {n} was not written by this command "
                             "(another prompts file or other settings): refusing to append to "
                             "it; pass another --output")
        done.add((i, r["method"]))

    return done, len(whole.encode("utf-8"))


def append_line(path, record):
    """One JSON line in one write to a file opened for appending: a kill leaves whole lines,
    processes never interleave. A write the machine refuses or cuts short (a full disk) is taken
    back and raised as a WriteError."""
    line = (json.dumps(record) + "\n").encode("utf-8")
    try:
        with open(path, "ab", buffering=0) as f:
            n = f.write(line) or 0
            if n < len(line):                            # part of a line: take it back, say so
                f.truncate(f.tell() - n)
                raise OSError(errno.ENOSPC, f"only {n} of the line's {len(line)} bytes were written (a full disk?)")
    except OSError as err:
        raise WriteError(f"cannot write --output {path!r}: {err.strerror or err}") from None


def write_page(path, text, flag="--trace"):
    """The --trace page (or the benchmark's JSON), all or nothing: written to a
    temporary file, then renamed."""
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    except OSError as err:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        raise WriteError(f"cannot write {flag} {path!r}: {err.strerror or err}") from None


def check_run(args):
    """A run's checks before any model: (a Config per method, the prompt records, the
    settings of every result)."""
    cfgs = configs(args)
    one = args.prompt is not None

    for bad, message in ((one == (args.prompts_file is not None), "pass one of --prompt TEXT or --prompts-file FILE"),
                         (one and not args.prompt.strip(), "the prompt is empty: pass some text with --prompt"),
                         (not one and not args.output, "--prompts-file needs --output FILE.jsonl: results go there"),
                         (not one and args.trace, "--trace draws one prompt: use it with --prompt"),
                         (args.batch_size < 1, f"the batch size must be at least 1, got {args.batch_size}")):
        if bad:
            raise InputError(message)

    for path, flag in ((args.output, "--output"), (args.trace, "--trace")):
        if path and os.path.isdir(path):
            raise InputError(f"cannot write {flag} {path!r}: it is a folder")
        if path and not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
            raise InputError(f"cannot write {flag} {path!r}: its folder does not "
                             "exist or is read-only")
        if path and os.path.exists(path) and not os.access(path, os.W_OK):
            raise InputError(f"cannot write {flag} {path!r}: the file is read-only")
        if path:
            probe_write(path, flag)

    if one:
        check_text(args.prompt, "--prompt")

    prompts = [{args.prompt_field: args.prompt}] if one else read_prompts(args.prompts_file, args.prompt_field)
    settings = {k: v for k, v in asdict(cfgs[0]).items() if k != "method"}
    # one spelling a folder
    where = lambda name: os.path.realpath(name) if name and os.path.isdir(name) else name
    settings.update(dllm=where(args.dllm), reward_model=where(args.reward_model), score_model=where(args.score_model),
                    dtype=args.dtype, prompt_field=args.prompt_field, batch_size=args.batch_size,
                    compile=args.compile, deterministic=args.deterministic)
    return cfgs, prompts, settings


def probe_write(path, flag):
    """Opens `path` for appending, writing nothing (a file it creates is removed again):
    a path the machine will not write (a read-only file system, /sys, /proc) is found
    before any model loads."""
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as err:
        raise InputError(f"cannot write {flag} {path!r}: {err.strerror or err}") from None
    if not existed:
        with contextlib.suppress(FileNotFoundError):     # (torchrun's other processes probe it too)
            os.remove(path)


def run_prompts(args, models, judge, cfgs, prompts, settings, todo, world=1):
    """Every method on `todo`'s prompts (index, methods left), a batch at a time: results, and with
    --trace, steps. Under torchrun every process runs as many rounds as the first and learns, after
    each, any other's error."""
    results = []
    traces = []
    # the same in every process
    rounds = math.ceil(math.ceil(len(prompts) / world) / args.batch_size)
    progress = {"total": sum(len(left) for _, left in todo), "done": 0, "began": time.perf_counter()}

    for b in range(0, rounds * args.batch_size, args.batch_size):
        error = None
        try:
            for cfg in cfgs:
                batch = [i for i, left in todo[b:b + args.batch_size] if cfg.method in left]
                if batch:
                    run_batch(args, models, judge, cfg, prompts, settings, batch, results, traces, progress)
        except (InputError, WriteError) as err:
            error = err
        agree(world, error)

    return results, traces


def run_batch(args, models, judge, cfg, prompts, settings, batch, results, traces, progress):
    """One method on a batch of prompts: each result checked, printed, appended to --output."""
    trace = []
    one = args.prompt is not None
    out = generate(models, [prompts[i][args.prompt_field] for i in batch], [cfg.seed + i for i in batch], cfg,
                   one, (lambda *step: trace.append(step)) if args.trace else None, judge, args.compile)

    for i, result in zip(batch, out):
        scores = [v for r in result["responses"] for k, v in r.items() if k in ("reward", "score")]
        if not all(map(math.isfinite, scores)):
            raise InputError(f"prompt {i}, {cfg.method}: a response's score is {scores} (not a "
                             "number): the reward model's weights or --dtype (float16 "
                             "overflows) are at fault")
        results.append({**prompts[i], "index": i, **result, "settings": settings})
        traces.append(trace)
        for j, r in enumerate(result["responses"] if one else []):
            judged = f", judge's score {r['score']:.4f}" if judge else ""
            show(f"--- {cfg.method} trajectory {j}: reward "
                 f"{r['reward']:.4f}{judged}\n{r['text']}\n")
        if args.output:
            append_line(args.output, results[-1])
        progress["done"] += 1
        done = progress["done"]
        total = progress["total"]
        seconds = time.perf_counter() - progress["began"]
        left = f", about {seconds / done * (total - done):.0f} s left" if done < total else ""
        print(f"prompt {i} {cfg.method} ({done} of {total}): Top@1 "
              f"{result['top1_reward']:.4f}  Avg@{cfg.K} {result['avg_reward']:.4f}  "
              f"{seconds / done:.1f} s per result{left}", file=sys.stderr)


def agree(world, error):
    """Under torchrun, every process learns the first error any process met, and raises it: all end
    together, with the same line, instead of waiting for one that has gone."""
    if world > 1:
        errors = [None] * world
        torch.distributed.all_gather_object(errors, None if error is None else (type(error).__name__, str(error)))
        first = next((e for e in errors if e), None)
        error = None if first is None else (WriteError if first[0] == "WriteError" else InputError)(first[1])
        if error is not None:                            # every process says it before any leaves
            print(f"entrgi.py: error: {error}", file=sys.stderr, flush=True)
            leave(74 if isinstance(error, WriteError) else 2)

    if error is not None:
        raise error


def summarize(args, results, prompts, settings, new, seconds):
    """Every result so far (with --output, the file's): each method's mean Top@1 and Avg@N,
    appended, then printed."""
    if args.output and regular_file(args.output):
        with open(args.output, encoding="utf-8") as f:
            results = [r for r in map(json.loads, f) if "summary" not in r]

    keys = ["top1_reward", "avg_reward"] + (["top1_score", "avg_score"] if args.score_model else [])
    rows = {method: [r for r in results if r["method"] == method] for method in METHODS}
    table = {method: {"prompts": len(rs), **{k: sum(r[k] for r in rs) / len(rs) for k in keys}}
             for method, rs in rows.items() if rs}

    # before printing: a reader gone from stdout loses nothing
    if args.output:
        append_line(args.output, {"summary": {
            "prompts": len(prompts), "results": len(results), "new_results": new, "settings": settings,
            "seconds_per_result": seconds / new if new else None, "table": table}})

    show(f"{plural(len(results), 'result')} for {plural(len(prompts), 'prompt')}, {new} new")
    heads = ["Top@1", f"Avg@{args.samples}", "judge Top@1", f"judge Avg@{args.samples}"][:len(keys)]
    show(f"{'method':>8} {'prompts':>8}" + "".join(f" {h:>12}" for h in heads))

    for method, row in table.items():
        show(f"{method:>8} {row['prompts']:8d}" + "".join(f" {row[k]:12.4f}" for k in keys))


def plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


def show(text):
    """print to standard output; a reader that has gone (| head -1) ends the
    printing, not the run."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run(args):
    """Every prompt (--prompt or --prompts-file) with every method asked for: printed and, with
    --output, appended as a JSON line as it finishes (the same command resumes; torchrun's processes
    share the prompts); a summary."""
    cfgs, prompts, settings = check_run(args)
    alone = int(os.environ.get("WORLD_SIZE", 1)) == 1
    with hold(args.output) if args.output and alone else contextlib.nullcontext():
        run_checked(args, cfgs, prompts, settings)


def run_checked(args, cfgs, prompts, settings):
    """`run` after the checks, with --output held."""
    done, whole = read_output(args.output, prompts, args.prompt_field, settings) if args.output else (set(), 0)
    if args.trace and done:
        raise InputError(f"--output {args.output!r} holds this run already: to trace it, "
                         "pass another --output")
    device = pick_device(args.device)
    warn_slow_dtype(device, args.dtype)
    world, rank = join_processes(args, device, whole)

    dllm, tok = load_dllm(args.dllm, device, args.dtype)
    rm, rm_tok = load_reward_model(args.reward_model, device, args.dtype)
    judge = load_reward_model(args.score_model, device, args.dtype) if args.score_model else None
    embedding = rm.get_input_embeddings().weight[vocab_map(tok, rm_tok, dllm.config.vocab_size)[0].to(device)]
    check_fits(dllm, [dllm_prompt_ids(tok, r[args.prompt_field]) for r in prompts], args.max_new_tokens)

    todo = [(i, {c.method for c in cfgs} - {method for j, method in done if j == i})
            for i in range(rank, len(prompts), world)]
    if done and rank == 0:
        print(f"resuming: {plural(len(done), 'result')} already in {args.output}", file=sys.stderr)
    start = time.perf_counter()
    models = (dllm, tok, rm, rm_tok, embedding)
    results, traces = run_prompts(args, models, judge, cfgs, prompts, settings, todo, world)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU memory: {peak:.2f} GiB", file=sys.stderr)
    if args.trace:
        write_page(args.trace, trace_page(args.prompt, settings, results, traces, tok))
        print(f"the denoising page: {args.trace}", file=sys.stderr)

    new = torch.tensor([len(results)], device=device)
    if world > 1:
        torch.distributed.all_reduce(new)                # NCCL reduces CUDA tensors, gloo CPU ones
    error = None
    try:
        if rank == 0:
            summarize(args, results, prompts, settings, int(new), time.perf_counter() - start)
    except WriteError as err:
        error = err
    agree(world, error)
    if world > 1:
        leave(0)


def join_processes(args, device, whole):
    """Under torchrun, join the process group (one process per GPU; each takes every
    world-th prompt): (world, rank). The first process drops an unfinished last line of
    --output before any appends."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = 0
    if world > 1:
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        rank = torch.distributed.get_rank()

    if rank == 0 and args.output and regular_file(args.output) and os.path.exists(args.output) \
            and os.path.getsize(args.output) > whole:
        os.truncate(args.output, whole)
    if world > 1:
        torch.distributed.barrier()                      # no process appends before the cut
    return world, rank


def leave(status):
    """End a torchrun process once every process has reached this point.

    The exit skips the interpreter's teardown (os._exit): past the barrier nothing is left to write,
    and the gloo process group's C++ threads can abort a normal exit ("terminate called without an
    active exception", SIGABRT), which torchrun then reports in place of the status."""
    # no process leaves while another still talks to it
    torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def warn_slow_dtype(device, dtype):
    """bfloat16 and float16 have no fast kernels on most CPUs: say so before a slow run."""
    if torch.device(device).type == "cpu" and dtype in ("bfloat16", "float16"):
        print(f"entrgi.py: warning: --dtype {dtype} on a CPU runs many times slower than float32 "
              "(17x measured on the tests' models); leave --dtype auto there", file=sys.stderr)


def deterministic():
    """Process-wide: CUDA kernels that give the same result on every run on the same GPU
    (torch's deterministic algorithms; attention's plain math kernel, whose backward
    adds in a fixed order)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")      # before cuBLAS starts
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)


def main(argv=None):
    parser, args = parse_args(argv)

    if args.deterministic:
        deterministic()

    try:
        if args.benchmark:
            cfg = configs(args)[0]
            if args.method == "all" or args.benchmark_steps < 1 or (args.benchmark_layers or 1) < 1:
                raise InputError("--benchmark times one method (not all), at least one "
                                 "repetition, at least one layer")
            warn_slow_dtype(pick_device(args.device), args.dtype)
            result = benchmark(args.benchmark, pick_device(args.device), args.dtype, cfg.K, cfg.L, cfg.M, 64,
                               args.benchmark_steps, cfg.method, args.benchmark_layers, args.benchmark_first_step,
                               args.compile)
            report(result)
            if args.output:
                write_page(args.output, json.dumps(result, indent=1) + "\n", "--output")
        else:
            run(args)
    except InputError as err:
        parser.exit(2, f"entrgi.py: error: {err}\n")
    except WriteError as err:
        parser.exit(74, f"entrgi.py: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "\nentrgi.py: interrupted\n")
    except (torch.OutOfMemoryError, MemoryError) as err:
        parser.exit(2, f"entrgi.py: error: out of memory ({' '.join(str(err).split())[:160]}): lower --batch-size, "
                       "--samples or --max-new-tokens, or use a device with more memory\n")
    except RuntimeError as err:
        if "can't allocate memory" not in str(err):      # the CPU allocator's out of memory
            raise
        parser.exit(2, "entrgi.py: error: out of memory: lower --batch-size, --samples or --max-new-tokens\n")


# -----------------------------------------------------------------------------
# 7. Benchmark: the cost of a guided step at the real size, without downloaded weights


# The presets' models: the dLLM's configuration class and fields, and the reward model's (Qwen3,
# one label). The real sizes: Dream 7B and LLaDA 8B, each with Skywork-Reward-V2-Qwen3-1.7B.
SKYWORK = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
               num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
               head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6, num_labels=1,
               pad_token_id=151643)
DREAM_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False, shift_logits=True)
LLADA_8B = dict(vocab_size=126464, hidden_size=4096, intermediate_size=12288,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                rope_theta=5e5, rms_norm_eps=1e-5, tie_word_embeddings=False, shift_logits=False)
SMALL_DLLM = dict(vocab_size=32768, hidden_size=512, intermediate_size=1536,
                  num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                  tie_word_embeddings=False, shift_logits=True)
SMALL_RM = dict(vocab_size=32768, hidden_size=384, intermediate_size=1024,
                num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
                head_dim=64, num_labels=1, pad_token_id=0)
TINY_DLLM = dict(vocab_size=384, hidden_size=64, intermediate_size=128,           # the tests'
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 tie_word_embeddings=False, shift_logits=True)
TINY_RM = dict(vocab_size=360, hidden_size=64, intermediate_size=128,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               head_dim=16, num_labels=1, pad_token_id=0)
PRESETS = {
    "real": ("Qwen2Config", DREAM_7B, SKYWORK),
    "llada": ("LlamaConfig", LLADA_8B, SKYWORK),
    "small": ("Qwen2Config", SMALL_DLLM, SMALL_RM),
    "tiny": ("Qwen2Config", TINY_DLLM, TINY_RM),
}


def peak_memory(fn, cuda):
    """Runs fn once: its peak memory beyond what it found, GiB (on CPUs the resident set,
    Linux only; else None)."""
    status = lambda key: next(int(l.split()[1]) / 2**20 for l in open("/proc/self/status") if l.startswith(key))

    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**30
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                 # resets the peak resident set, VmHWM
        before = status("VmRSS:")

    fn()

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**30 - before

    return status("VmHWM:") - before if os.path.exists("/proc/self/clear_refs") else None


def benchmark(preset="small", device="cpu", dtype="auto", K=4, L=128, M=3, P=64, steps=3, method="entrgi",
              layers=None, first_step=False, compile=False):
    """Times a guided step at m masked positions (L / 2: a T = L run's average step; L: its first)
    against two floors: the eager floor (the dLLM forward, M times the reward model's forward and
    backward and q @ E's, timed alone) and the physical floor (the step's FLOPs at this device's
    matmul rate, plus its vocabulary- sized tensors' bytes at its copy bandwidth, both measured
    here). Medians of `steps` runs."""
    dtype = pick_dtype(device, dtype)
    cuda = torch.device(device).type == "cuda"
    name = preset if isinstance(preset, str) else "custom"
    say(f"benchmark: building random {name} models on {device}")
    dllm, rm = random_models(preset, device, dtype, layers)
    m = L if first_step else L // 2
    # one step that reveals all m: a step at m masked positions
    cfg = Config(method, K, T=1, L=L, M=M).check()
    g = torch.Generator()
    denoiser, reward, embedding, y0 = step_inputs(dllm, rm, K, L, m, P, g, compile)
    V = dllm.config.vocab_size
    step = lambda: sample(denoiser, reward, embedding, [0], V - 1, [V - 2], cfg, y0=y0)

    say("benchmark: the first step" + (" (compiling)" if compile else ""))
    began = time.perf_counter()
    step()
    first_s = time.perf_counter() - began
    timed = timer(steps, cuda)
    peak = peak_memory(step, cuda)

    say("benchmark: timing the step, its parts, the device")
    parts, rm_pass, q = floor_parts(denoiser, reward, embedding, y0, m, cfg, g, timed)
    total = timed(step)
    counts = {name: count_ops(fn, V) for name, fn in (("step", step), ("dllm", lambda: denoiser(y0)), ("rm", rm_pass))}
    rates = hardware(device, dtype, timed)
    physical = counts["step"]["flops"] / rates["matmul_flop_s"] + counts["step"]["vocab_bytes"] / rates["copy_byte_s"]
    draw = timed(lambda: top_p_sample(q, cfg.top_p, torch.Generator(device)))
    softmax = timed(lambda: q.softmax(-1))
    weights = sum(t.numel() * t.element_size() for model in (dllm, rm) for t in model.parameters()) / 2**30
    outside = counts["step"]["ops"] - counts["dllm"]["ops"] - M * counts["rm"]["ops"]
    return {"preset": name, "layers": layers, "device": device,
            "dtype": str(dtype)[6:], "K": K, "L": L, "masked": m, "M": M, "P": P, "method": method, "steps": steps,
            "compile": compile, "first_step_s": first_s, "parts_s": parts, "floor_s": sum(parts.values()),
            "total_s": total, "ratio": total / sum(parts.values()), "physical_floor_s": physical,
            "physical_ratio": total / physical, **rates, "step_flops": counts["step"]["flops"],
            "step_vocab_bytes": counts["step"]["vocab_bytes"], "host_waits_per_step": counts["step"]["waits"],
            "ops_per_step": counts["step"]["ops"], "ops_outside_models": outside, "top_p_draw_s": draw,
            "softmax_s": softmax, "peak_beyond_weights_gib": peak, "weights_gib": weights}


def step_inputs(dllm, rm, K, L, m, P, g, compile):
    """The benchmark's step: a random prompt of P tokens and K rows of L tokens, m of them masked
    (mask id V - 1, end id V - 2), the denoiser and the reward over them, and E^R."""
    V = dllm.config.vocab_size
    V_rm = rm.config.vocab_size
    device = dllm.device
    prompt, prefix, suffix = (torch.randint(0, min(V, V_rm) - 2, (n,), generator=g).tolist() for n in (P, P + 12, 5))
    # (V, d) E^R
    embedding = rm.get_input_embeddings().weight[torch.arange(V, device=device) % V_rm]
    y0 = torch.randint(0, V - 2, (K, L), generator=g)
    y0 = y0.scatter(1, torch.rand(K, L, generator=g).argsort(1)[:, :m], V - 1).to(device)
    denoiser = make_denoiser(dllm, [prompt], K, L, V - 1, compile)
    reward = make_reward(rm, [prefix], [suffix], K, [V - 2], compile=compile)
    return denoiser, reward, embedding, y0


def floor_parts(denoiser, reward, embedding, y0, m, cfg, g, timed):
    """The eager floor's parts, timed alone: the dLLM forward, M reward forwards and
    backwards, M soft embeddings q @ E forward and backward, m masked positions per row.
    Also the reward pass and q (K, m, V), for what follows."""
    K = y0.shape[0]
    V = embedding.shape[0]
    # (K, m, V)
    q = torch.softmax(denoiser(y0)[y0 == V - 1].view(K, m, V) / cfg.temperature, -1)
    e = embedding[y0].detach().requires_grad_(True)
    p = q.detach().requires_grad_(True)
    grad_e = torch.randn(K, m, embedding.shape[1], generator=g).to(embedding.device, embedding.dtype)
    parts = {}

    with torch.no_grad():
        parts["dLLM forward"] = timed(lambda: denoiser(y0))

    rm_pass = lambda: torch.autograd.grad(reward(e, y0).sum(), e)
    soft = lambda: torch.autograd.grad(p.to(e.dtype) @ embedding, p, grad_e)
    parts[f"{cfg.M} x reward forward + backward"] = cfg.M * timed(rm_pass)
    parts[f"{cfg.M} x soft embedding q @ E, fwd + bwd"] = cfg.M * timed(soft)
    return parts, rm_pass, q


def say(text):
    print(text, file=sys.stderr, flush=True)


def random_models(preset, device, dtype, layers=None):
    """A preset's dLLM and reward model with random weights (`layers` layers
    each where asked), frozen."""
    import transformers as tf
    kind, dllm_fields, rm_fields = PRESETS[preset] if isinstance(preset, str) else preset
    depth = {"num_hidden_layers": layers} if layers else {}
    torch.manual_seed(0)
    with torch.device(device):
        dllm_config = getattr(tf, kind)(**{**dllm_fields, **depth})
        dllm = tf.AutoModelForCausalLM.from_config(dllm_config, **dtype_kwarg(dtype))
        rm_config = tf.Qwen3Config(**{**rm_fields, **depth})
        rm = tf.AutoModelForSequenceClassification.from_config(rm_config, **dtype_kwarg(dtype))
    return bidirectional(dllm).eval().requires_grad_(False), rm.eval().requires_grad_(False)


def timer(steps, cuda):
    """timed(fn): the median seconds of `steps` runs of fn, after one that warms up."""
    def timed(fn):
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return sorted(times[1:])[steps // 2]
    return timed


def hardware(device, dtype, timed):
    """This device's dense matmul rate in `dtype` (FLOP/s) and copy bandwidth (bytes
    read and written / s)."""
    n = 8192 if torch.device(device).type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    src = torch.empty(2**28 if torch.device(device).type == "cuda" else 2**25, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return {"matmul_flop_s": 2 * n**3 / timed(lambda: a @ b), "copy_byte_s": 2 * src.numel() / timed(
        lambda: dst.copy_(src))}


# operators that make a CUDA host wait
WAITS = ("_local_scalar_dense", "nonzero", "masked_select", "unique")


def count_ops(fn, V):
    """Runs fn once, counting: aten operator calls, FLOPs (torch.utils.flop_counter), host waits,
    and the bytes read and written by operators other than matrix products on tensors whose last
    axis is the vocabulary."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode
    seen = {"ops": 0, "waits": 0, "vocab_bytes": 0}
    def vocab_bytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors
                   if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == V and t.numel() >= 2 * V)
    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.__name__.split(".")[0]
            seen["ops"] += 1
            seen["waits"] += name in WAITS
            if "mm" not in name and "attention" not in name:
                flat = [*args, *(kwargs or {}).values(), *(out if isinstance(out, (tuple, list)) else [out])]
                seen["vocab_bytes"] += vocab_bytes(flat)
            return out

    with FlopCounterMode(display=False) as flops, Count():
        fn()

    return {**seen, "flops": flops.get_total_flops()}


def report(r):
    """Prints what `benchmark` measured."""
    print(f"benchmark: {r['preset']} preset" + (f" with {r['layers']} layers" if r["layers"] else "")
          + f", {r['device']}, {r['dtype']}, K = {r['K']}, L = {r['L']} ({r['masked']} masked), M = {r['M']}, "
          f"prompt {r['P']} tokens, {r['method']}" + (", compiled" if r["compile"] else "")
          + f", median of {r['steps']}")
    rows = [*r["parts_s"].items(), ("eager floor (the parts)", r["floor_s"]), ("guided step", r["total_s"]),
            ("physical floor", r["physical_floor_s"]), ("first step (warm-up, compiling)", r["first_step_s"])]

    for name, seconds in rows:
        print(f"  {name:<40} {seconds * 1e3:10.1f} ms")

    print(f"  {'guided step / eager floor':<40} {r['ratio']:10.2f}")
    print(f"  {'guided step / physical floor':<40} {r['physical_ratio']:10.2f}   ({r['step_flops'] / 1e12:.3f} TFLOP "
          f"at {r['matmul_flop_s'] / 1e12:.2f} TFLOP/s; {r['step_vocab_bytes'] / 2**30:.2f} GiB of vocabulary "
          f"tensors at {r['copy_byte_s'] / 2**30:.1f} GiB/s)")
    print(f"  {'host waits in a step':<40} {r['host_waits_per_step']:10d}")
    print(f"  {'operator calls: step, outside the models':<40} {r['ops_per_step']:10d} {r['ops_outside_models']:6d}")
    draw = r["top_p_draw_s"]
    softmax = r["softmax_s"]
    peak = r["peak_beyond_weights_gib"]
    print(f"  {'top-p draw / softmax (K m x |V|)':<40} {draw / softmax:10.2f}   "
          f"({draw * 1e3:.1f} / {softmax * 1e3:.1f} ms)")
    peak = "       n/a" if peak is None else f"{peak:10.2f} GiB"
    print(f"  {'peak memory beyond the weights':<40} {peak}   (weights {r['weights_gib']:.2f} GiB)")


if __name__ == "__main__":
    main()
