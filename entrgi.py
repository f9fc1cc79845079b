"""
EntRGi: entropy-aware reward guidance for masked diffusion language models. The method, sections
1-4, needs torch alone; below its banner is what runs it (loading, the command line, the benchmark).

References:
1) A. Tejaswi, L. Rout, C. Caramanis, S. Shakkottai, S. Sanghavi, "EntRGi: Entropy Aware Reward
   Guidance for Diffusion Language Models", arXiv:2602.05000, 2026: the relaxation, Algorithm 1
2) APS, the straight-through baseline: Rout et al., 2025
3) Dream's sampler, generation_utils.py (Dream-org/Dream): top-p, the confidences, the schedule
4) LLaDA's sampler, generate.py (ML-GSAI/LLaDA): low-confidence remasking, blocks
5) the authors' release (atutej/entrgi): the causal LM's log-likelihood as a reward
"""

import os
import signal


def interrupted(signum, frame):
    """Ctrl-C before main() takes over (while torch loads): one line, status 130."""
    os.write(2, b"\nentrgi.py: interrupted\n")
    os._exit(130)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, interrupted)

# (imported after the handler: Ctrl-C while they load ends in the same line)
import inspect
import math
from dataclasses import dataclass

import torch


METHODS = ("bon", "soft", "aps", "entrgi")
REMASKING = ("entropy", "probability", "margin", "random")
CHOICES = {"method": METHODS, "entropy_from": ("sampling", "model"), "remasking": REMASKING,
           "schedule": ("dream", "linear"), "eos_last": (True, False)}
RANGES = {"K": (1, 2**16), "T": (1, 2**16), "L": (1, 2**16), "M": (0, 2**16), "lr": (0.0, 1e3),
          "temperature": (1e-3, 1e3), "top_p": (0.0, 1.0), "seed": (0, 2**63 - 1),
          "guide_every": (1, 2**16)}                # int fields have int bounds, floats float ones


@dataclass
class Config:
    method: str = "entrgi"      # entrgi | aps (straight-through) | soft | bon (unguided)
    K: int = 4                  # trajectories per prompt
    T: int = 128                # denoising steps
    L: int = 128                # new tokens
    M: int = 3                  # Adam steps on psi per denoising step
    lr: float = 0.5             # eta (the authors' README; their scripts: 1.0)
    temperature: float = 0.7    # tau
    top_p: float = 0.95         # 0: the most likely token (and its ties) alone
    seed: int = 0
    block_length: int | None = None  # blocks revealed left to right (None: one block)
    entropy_from: str = "sampling"   # w from softmax(psi / tau); "model": softmax(psi)
    remasking: str = "entropy"  # line 5's order: entropy | probability | margin | random
    schedule: str = "dream"     # tokens revealed per step: dream | linear
    eos_last: bool = True       # a sampled end token is revealed after all others
    guide_every: int = 1        # guide steps 0, k, 2k, ... (the authors' apply_every_k)

    @property
    def guided(self):
        return self.method != "bon" and self.M > 0 and self.lr > 0

    def check(self):
        """self, or a ValueError naming the first field that does not fit."""
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            expect(value in allowed, f"{name} must be one of {allowed}, got {value!r}")
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            kind = int if type(low) is int else (int, float)
            expect(type(value) is not bool and isinstance(value, kind) and low <= value <= high,
                   f"{name} must be {type(low).__name__} in [{low}, {high}], got {value!r}")
        block = self.L if self.block_length is None else self.block_length
        expect(type(block) is int and 1 <= block <= self.L and self.L % block == 0
               and self.T % (self.L // block) == 0, f"block_length must divide L = {self.L} into "
               f"blocks that share T = {self.T} evenly, got {self.block_length!r}")
        return self


def expect(ok, message, error=ValueError):
    """An argument's check: raise error(message) unless ok."""
    if not ok:
        raise error(message)


def f32(x):
    """x in float32 (float64 stays): no probability, sum or draw is bfloat16 or float16."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# -----------------------------------------------------------------------------
# 1. The relaxation: how a masked position is fed to the reward model


def relax(logits, embedding, method, temperature, top_p, generator,
          x=None, entropy_from="sampling"):
    """The reward model's input e (..., d) at positions whose logits are psi (..., V), and the
    relaxation's parts q, x (None for soft), w. embedding (V, d): E^R in the dLLM's token order.

      q      = softmax(psi / tau)
      e_soft = q E                                 the soft relaxation
      e_hard = E[x],  x ~ top-p(q)                 a hard token
      w      = H(q) / log |V|                      the entropy weight, in [0, 1]
      e      = e_soft + sg(w (e_hard - e_soft))    EntRGi; sg: stop-gradient

    soft: w = 0; aps (straight-through): w = 1. x: a hard token to hold, not drawn.
    entropy_from="model": w from softmax(psi), as the authors' scripts compute it."""
    expect(method in ("soft", "aps", "entrgi"), f"method must be entrgi, aps or soft: {method!r}")
    expect(torch.is_tensor(logits) and logits.is_floating_point() and torch.is_tensor(embedding)
           and embedding.shape[0] == logits.shape[-1],
           "logits (..., V) and embedding (V, d) must be float tensors of one V", TypeError)
    expect(temperature > 0 and 0 <= top_p <= 1, "temperature must be > 0 and top_p in [0, 1]")
    q = torch.softmax(f32(logits) / temperature, -1)             # (..., V)
    e_soft = q.to(embedding.dtype) @ embedding                   # (..., d) in E^R's dtype
    if method == "soft":
        return e_soft, q, None, torch.zeros_like(q[..., 0])
    with torch.no_grad():
        x = top_p_sample(q, top_p, generator) if x is None else x
        p = q if entropy_from == "sampling" else torch.softmax(f32(logits), -1)
        w = torch.ones_like(p[..., 0]) if method == "aps" else entropy(p) / math.log(p.shape[-1])
        step = w.unsqueeze(-1).to(e_soft.dtype) * (embedding[x] - e_soft)   # w (e_hard - e_soft)
    return e_soft + step, q, x, w


def entropy(q):
    """H(q) over the last axis, with 0 log 0 = 0."""
    return torch.special.entr(f32(q)).sum(-1)


def nucleus(q, top_p):
    """q (..., V) sorted, descending; the sort's order; the least probability (..., 1) in the
    top-p nucleus: the tokens whose more likely tokens hold at most top_p (Dream's rule)."""
    s, order = f32(q).sort(dim=-1, descending=True, stable=True)
    before = s.cumsum(-1).sub_(s)                                # the mass before each token
    inside = (before <= top_p) & (s > 0)                         # a prefix of each row
    return s, order, s.gather(-1, inside.sum(-1, keepdim=True).clamp(min=1) - 1)


def top_p_sample(q, top_p, generator):
    """x (...) ~ q (..., V) in its top-p nucleus (ties in or out together): inverse CDF on the
    sorted rows, nothing read back (as torch.multinomial may); a NaN row draws an index in range."""
    s, order, least = nucleus(q, top_p)
    n = (s >= least).sum(-1, keepdim=True).clamp(min=1)          # the nucleus: a prefix of s
    cdf = s.masked_fill_(s < least, 0).cumsum_(-1)               # (in place: s is the sort's copy)
    u = uniform(q.shape[:-1], generator, q.device).unsqueeze(-1) * cdf[..., -1:]
    i = torch.searchsorted(cdf, u.to(cdf.dtype), right=True)
    return order.gather(-1, torch.minimum(i, n - 1)).squeeze(-1)   # (rounding) in the nucleus


def uniform(shape, generator, device):
    """Uniforms in [0, 1). generator: one, or a list of one per prompt, each drawing its own
    block of rows (shape[0] = prompts x K): a prompt's draws do not depend on its batch."""
    generators = generator if isinstance(generator, (list, tuple)) else [generator]
    rows = shape[0] // len(generators)
    draws = [torch.rand((rows, *shape[1:]), generator=g, device=device) for g in generators]
    return torch.cat(draws)


# -----------------------------------------------------------------------------
# 2. The reward bridge: R on the chat prefix, the response slot e, the suffix


def reads(tokens, end_ids, lead_ids=None, end=False):
    """(N, L) bool: the positions of tokens (N, L) a reader sees: before the first end token (end:
    and it), less a run of lead_ids at the start (a chat template that strips those)."""
    ends = torch.isin(tokens, end_ids).long()
    seen = ends.cumsum(-1) - ends * end == 0
    if lead_ids is not None and len(lead_ids):
        seen &= torch.isin(tokens, lead_ids).cumprod(-1) == 0
    return seen


def attention_bias(valid, causal, dtype, past=0):
    """valid (N, T) bool -> an additive mask (N, 1, T, past + T) hiding the invalid keys, behind
    `past` cached keys every query sees. Each query sees itself: no row is all hidden."""
    N, T = valid.shape
    allowed = valid[:, None, None, :] | torch.eye(T, dtype=torch.bool, device=valid.device)
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    cached = torch.ones(N, 1, T, past, dtype=torch.bool, device=valid.device)
    allowed = torch.cat([cached, allowed], -1)                   # (N, 1, T, past + T)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


def cached(model, layers=()):
    """The body's keyword arguments for a DynamicCache holding layers [(keys, values), ...] (by
    `update`, as every transformers from 4.51 allows): from the signatures, the config from 4.56,
    the keyword `cache` from 5.24 (5.0-5.23 swallow it unused), `past_key_values` before."""
    from transformers import DynamicCache
    takes_config = "config" in inspect.signature(DynamicCache.__init__).parameters
    cache = DynamicCache(config=model.config) if takes_config else DynamicCache()
    for i, (keys, values) in enumerate(layers):
        cache.update(keys, values, i)
    keyword = "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else \
        "past_key_values"
    return {"use_cache": True, keyword: cache}


def chats(model, prefixes, suffixes, K):
    """Each prompt's chat around its K responses: its prefix (ids) read once by the model's body.
    read(e (N, L, d), seen (N, L)) yields, prompt by prompt, N = len(prefixes) x K rows: (its rows,
    its suffix (ids), the positions read (K, L + S), the hidden states (K, 1 + L + S, h): the
    prefix's last, then e where seen (the rest hidden from attention) and the suffix's)."""
    E = model.get_input_embeddings().weight
    chat = []
    for prefix, suffix in zip(prefixes, suffixes):
        cache = cached(model)
        with torch.inference_mode(False), torch.no_grad():        # (plain tensors, under any mode)
            h = model.base_model(inputs_embeds=E[torch.tensor([prefix], device=E.device)], **cache)
        past = [(keys, values) for keys, values, *_ in list(cache.values())[-1]]
        chat.append((past, h.last_hidden_state[:, -1:], torch.tensor(suffix, device=E.device)))

    def read(e, seen):
        expect(len(e) == len(seen) == K * len(chat), f"reward: {len(e)} rows of e, {len(seen)} of "
               f"tokens, not K = {K} for each of its {len(chat)} prompts")
        for i, (past, last, suffix) in enumerate(chat):
            rows = slice(i * K, (i + 1) * K)
            whole = torch.ones(K, len(suffix), dtype=torch.bool, device=E.device)
            valid = torch.cat([seen[rows], whole], 1)
            x = torch.cat([e[rows].to(E.dtype), E[suffix].expand(K, -1, -1)], 1)   # (K, L + S, d)
            yield rows, suffix, valid, torch.cat([last.expand(K, -1, -1), hidden(model, x, valid,
                                                                                    past)], 1)

    return read


def hidden(model, e, valid, past=()):
    """The body's last hidden states (N, T, h) on input embeddings e (N, T, d), behind `past` keys
    and values of one row; valid (N, T): the positions read (the rest hidden from attention)."""
    P = past[0][0].shape[-2] if past else 0
    layers = [(keys.expand(len(e), -1, -1, -1), values.expand(len(e), -1, -1, -1))
              for keys, values in past]
    return model.base_model(inputs_embeds=e, attention_mask=attention_bias(valid, True, e.dtype, P),
                            position_ids=P + (valid.cumsum(1) - 1).clamp(min=0),
                            **cached(model, layers)).last_hidden_state


def rm_score(rm, h):
    """R (N,) from hidden states h (N, T, h): the score head at the last position, where
    transformers' classifier pools (padding anywhere but last)."""
    return rm.score(h[:, -1]).squeeze(-1).float()


def make_reward(rm, prefixes, suffixes, K, end_ids, lead_ids=()):
    """The classifier's reward for `sample`: reward(e (N, L, d), tokens (N, L)) -> R (N,), the score
    of each row's chat (`chats`), e read where `reads(tokens, end_ids, lead_ids)`."""
    device = rm.get_input_embeddings().weight.device
    end_ids = torch.as_tensor(end_ids, dtype=torch.long, device=device)
    lead_ids = torch.as_tensor(lead_ids, dtype=torch.long, device=device)
    read = chats(rm, prefixes, suffixes, K)

    def reward(e, tokens):
        return torch.cat([rm_score(rm, h) for *_, h in read(e, reads(tokens, end_ids, lead_ids))])

    return reward


def make_loglik_reward(lm, prefixes, suffixes, K, end_ids, vocab):
    """The causal LM's reward (the authors' second): reward(e, tokens, relaxed) -> R (N,), the mean
    log-likelihood lp the LM gives a row's targets: its response up to and with its first end
    token, then the suffix. vocab (V,): the LM's id of each dLLM token. A masked position's target
    is relaxed like its input, from guide's (idx, q, x, w): soft = sum_i sg(q_i) lp_i, hard = lp_x,
    soft + sg(w (hard - soft))."""
    end_ids = torch.as_tensor(end_ids, dtype=torch.long, device=vocab.device)
    read = chats(lm, prefixes, suffixes, K)

    def reward(e, tokens, relaxed):
        idx, q, x, w = relaxed                                   # (N, m), (N, m, V), (N, m) x2
        R = []
        for rows, suffix, valid, h in read(e, reads(tokens, end_ids, end=True)):
            targets = torch.cat([vocab[tokens[rows]], suffix.expand(K, -1)], 1)   # (K, T) ids
            # target t's log-probabilities, from the last position read before it (0: the prefix)
            seen = torch.where(valid, torch.arange(1, valid.shape[1] + 1, device=h.device), 0)
            before = torch.cat([torch.zeros_like(seen[:, :1]), seen.cummax(-1).values[:, :-1]], 1)
            h = h.gather(1, before.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
            lp = torch.log_softmax(lm.get_output_embeddings()(h), -1, dtype=torch.float32)
            ll = lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)      # (K, T): the hard targets'
            at = idx[rows].unsqueeze(-1)
            lp_m = lp.gather(1, at.expand(-1, -1, lp.shape[-1]))[..., vocab]   # (K, m, V) masked
            soft = (q[rows] * lp_m).sum(-1)                              # sum_i sg(q_i) lp_i
            hard = soft if x is None else lp_m.gather(-1, x[rows].unsqueeze(-1)).squeeze(-1)
            ll = ll.scatter(1, idx[rows], soft + (w[rows] * (hard - soft)).detach())
            R.append((ll * valid).sum(-1) / valid.sum(-1))
        return torch.cat(R)

    return reward


# -----------------------------------------------------------------------------
# 3. The guided step (Algorithm 1, lines 2-3)


@torch.inference_mode(False)     # whatever the caller's mode: tensors autograd can use, and
@torch.enable_grad()             # autograd on (Dream's generate, for one, runs under no_grad)
def guide(logits, y, idx, reward, embedding, generator, method="entrgi", M=3, lr=0.5,
          temperature=0.7, top_p=0.95, entropy_from="sampling", betas=(0.9, 0.999), eps=1e-8):
    """Algorithm 1, lines 2-3: psi (N, m, V) after M steps of torch.optim.Adam on -sum_n R_n, and
    the updates whose R or gradient was not finite (counted; their rows' gradient zero). logits:
    the denoiser's at the masked positions idx (N, m) of y (N, L). reward(e (N, L, d), tokens (N,
    L)) -> R (N,), differentiable in e, gets relax's (idx, q, x, w) too as a keyword `relaxed`."""
    expect(logits.dim() == 3 and idx.shape == logits.shape[:2] and y.shape[0] == len(idx),
           "logits (N, m, V), idx (N, m) and y (N, L) do not agree in N and m")
    expect(type(M) is int and M >= 0 and 0 <= lr < math.inf, "M must be an int >= 0, lr >= 0")
    relaxed = "relaxed" in inspect.signature(reward).parameters
    b1, b2 = betas

    # line 2: psi <- the logits at the masked positions (a copy: the dLLM stays frozen)
    psi = f32(logits).detach().clone()
    embedding = embedding.clone() if embedding.is_inference() else embedding   # (autograd's)
    idx = idx.clone()                                        # (so is idx, under any mode)
    moment1 = moment2 = 0.0                                  # Adam's moments
    skipped = torch.zeros((), dtype=torch.long, device=psi.device)
    e_known = embedding[y.scatter(1, idx, 0)]               # (N, L, d): E^R[y] if revealed
    at = idx.unsqueeze(-1).expand(-1, -1, e_known.shape[-1])    # (N, m, d)

    # line 3: M steps of Adam on psi, as torch.optim.Adam takes them
    for t in range(1, M + 1):
        psi.requires_grad_(True)
        e, q, x, w = relax(psi, embedding, method, temperature, top_p, generator,
                           entropy_from=entropy_from)
        tokens = y.scatter(1, idx, psi.detach().argmax(-1))  # masked: argmax psi (the end)
        parts = {"relaxed": (idx, q.detach(), x, w)} if relaxed else {}
        R = reward(e_known.scatter(1, at, e), tokens, **parts)   # (N,)
        expect(torch.is_tensor(R) and R.shape == y.shape[:1], f"reward gave "
               f"{tuple(R.shape) if torch.is_tensor(R) else R!r}, not R (N,) = ({len(y)},)")
        expect(R.requires_grad, "reward: R has no gradient path to e (scored from the tokens "
               "alone, or detached): guidance follows dR/de")
        g, = torch.autograd.grad(-R.sum(), psi, allow_unused=True)
        expect(g is not None, "reward: R does not depend on e, its first argument")
        R = R.detach()                       # (the graph goes: its memory, for the next step)
        del e, q

        finite = (R + g.sum((1, 2))).isfinite()             # (N,) the rows to update
        skipped += (~finite).sum()
        g = torch.where(finite[:, None, None], g, 0)
        moment1 = b1 * moment1 + (1 - b1) * g
        moment2 = b2 * moment2 + (1 - b2) * g**2
        del g                                # (its memory, before the next forward)
        psi = psi.detach() - lr * (moment1 / (1 - b1**t)) / ((moment2 / (1 - b2**t)).sqrt() + eps)

    return psi, skipped


# -----------------------------------------------------------------------------
# 4. The sampler (Algorithm 1) and the logits hook


def sample(denoiser, reward, embedding, seeds, mask_id, eos_ids, cfg, y0=None, on_step=None):
    """Algorithm 1: y (N, L), N = len(seeds) prompts x K rows (each prompt's drawn from its seed
    alone), and guide's skipped updates per step (T,). denoiser(y) -> logits (N, L, V), row l
    predicting token l; reward: as `guide` calls it. y0: the start (default: all masked).
    on_step(k, y, likely) follows a step that reveals; likely: the unguided argmax where masked."""
    expect(seeds and all(type(s) is int and 0 <= s < 2**63 for s in seeds),
           f"seeds must be a list of ints in [0, 2**63), got {seeds!r}")
    expect(torch.is_tensor(embedding) and embedding.dim() == 2, "embedding must be E^R (V, d)")
    device = embedding.device
    N = len(seeds) * cfg.check().K
    y = torch.full((N, cfg.L), mask_id, device=device) if y0 is None else y0.clone()
    counts = reveal_counts(y0, mask_id, cfg, N)              # the schedule, on the host, once
    gen_x = [torch.Generator(device).manual_seed(s) for s in seeds]
    gen_guide = [torch.Generator(device).manual_seed(s + 7919) for s in seeds]   # guidance's own
    eos_ids = torch.as_tensor(eos_ids, dtype=torch.long, device=device)
    skipped = torch.zeros(cfg.T, dtype=torch.long, device=device)
    broken = torch.zeros(cfg.T, dtype=torch.bool, device=device)   # steps whose q is NaN

    for k in range(cfg.T):
        if counts[k] == 0:                      # nothing to reveal: the step is skipped
            continue
        m = sum(counts[k:])                     # masked positions, as many in every row
        idx = (y != mask_id).int().argsort(dim=1, stable=True)[:, :m]   # (N, m)

        # line 1: the denoiser's logits at the masked positions
        logits = masked_logits(denoiser, y, idx, mask_id, embedding.shape[0])   # (N, m, V)
        q = torch.softmax(logits / cfg.temperature, -1)       # the unguided step
        broken[k] = q.isnan().any()
        order = confidence(cfg.remasking, q, cfg.top_p, gen_x)     # line 5 ranks by it

        # lines 2-3: guidance moves psi, and q with it
        if cfg.guided and k % cfg.guide_every == 0:
            del q                               # (its memory, for the guided step)
            psi, skipped[k] = guide(logits, y, idx, reward, embedding, gen_guide, cfg.method,
                                    cfg.M, cfg.lr, cfg.temperature, cfg.top_p, cfg.entropy_from)
            q = torch.softmax(psi / cfg.temperature, -1)

        # line 4: the candidates x0 ~ top-p(q)
        x0 = top_p_sample(q, cfg.top_p, gen_x)                # (N, m)
        # line 5: reveal the most confident; a drawn end token last; the current block only
        reveal = most_confident(order, x0, idx, counts[k], k, eos_ids, cfg)

        # line 6: write the revealed tokens; they never change again
        y = y.scatter(1, idx.gather(1, reveal), x0.gather(1, reveal))
        if on_step:
            on_step(k, y, y.scatter(1, idx, logits.argmax(-1)))

    if broken.any():                            # (the one read, after the loop: NaN in, noise out)
        raise FloatingPointError(f"denoiser: NaN or inf logits at step {int(broken.int().argmax())}")
    return y, skipped


def masked_logits(denoiser, y, idx, mask_id, V):
    """Line 1: the logits (N, m, V), float32, at the masked positions idx (N, m), the mask never
    proposed. The denoiser runs without autograd: its model stays frozen."""
    with torch.no_grad():
        logits = denoiser(y)
    expect(torch.is_tensor(logits) and logits.is_floating_point() and logits.shape == (*y.shape, V),
           f"denoiser gave {tuple(getattr(logits, 'shape', ()))}, not float logits (N, L, V) = "
           f"{(*y.shape, V)}: N = len(seeds) x K, V = len(embedding)")
    logits = f32(logits.gather(1, idx.unsqueeze(-1).expand(-1, -1, V)))
    if mask_id < V:
        logits[..., mask_id] = -math.inf
    return logits


def confidence(rule, q, top_p, generator):
    """Line 5's order (N, m), the highest revealed first, from q (N, m, V), the unguided step:
      entropy      -H(q)                               the paper; Dream's entropy
      probability  q after top-p (read at the draw)    Dream's maskgit_plus; LLaDA's low_confidence
      margin       top-1 minus top-2 of q after top-p  Dream's topk_margin
      random       uniform                             LLaDA's random
    """
    if rule == "entropy":
        return -entropy(q)
    if rule == "random":
        return uniform(q.shape[:-1], generator, q.device)
    q = f32(q)
    kept = torch.where(q >= nucleus(q, top_p)[2], q, 0)
    kept = kept / kept.sum(-1, keepdim=True)                   # q after top-p, as Dream's
    top2 = kept.topk(2, -1).values
    return kept if rule == "probability" else top2[..., 0] - top2[..., 1]


def most_confident(order, x0, idx, count, k, eos_ids, cfg):
    """Line 5: indices into idx (N, m) of the `count` positions step k reveals: the most confident,
    a drawn end token after the others (eos_last), in the current block."""
    if cfg.remasking == "probability":
        order = order.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    if cfg.eos_last:
        order = torch.where(torch.isin(x0, eos_ids), order - 1e4, order)   # below every other
    block = cfg.block_length or cfg.L
    current = k * (cfg.L // block) // cfg.T                    # the blocks share T evenly
    return order.masked_fill(idx // block != current, -math.inf).topk(count, -1).indices


def reveal_counts(y0, mask_id, cfg, N):
    """The tokens revealed at each of the T steps: `schedule` per block, blocks left to right."""
    blocks = cfg.L // (cfg.block_length or cfg.L)
    masked = [[cfg.L // blocks] * blocks]
    if y0 is not None:
        expect(y0.shape == (N, cfg.L) and y0.dtype == torch.long, f"y0 must be long ({N}, {cfg.L})")
        masked = (y0 == mask_id).view(N, blocks, -1).sum(-1).tolist()
    expect(all(row == masked[0] for row in masked), "y0's rows must be masked alike, per block")
    return [c for n in masked[0] for c in schedule(cfg.T // blocks, n, cfg.schedule)]


def schedule(T, n, kind="dream"):
    """Tokens revealed at each of T steps, n in all. dream (the paper's): floor(masked (1 - t_{k+1}
    / t_k)), t = linspace(1, 1e-3, T + 1), the rest last; linear (LLaDA's): n // T, +1 in the first
    n % T."""
    if kind == "linear":
        return [n // T + (k < n % T) for k in range(T)]
    t = torch.linspace(1, 1e-3, T + 1, device="cpu")             # float32, as Dream's
    counts = []
    for k in range(T - 1):
        counts.append(int((n - sum(counts)) * (1 - t[k + 1] / t[k])))
    return counts + [n - sum(counts)]


def logits_hook(reward, embedding, cfg, mask_id, prompt_length, generator):
    """EntRGi in a sampler of one's own, as Dream's generation_logits_hook_func: hook(step, tokens
    (N, P + L), logits (N, P + L, V)) -> logits, row i predicting token i, the masked response rows
    replaced by psi after `guide` at the guided steps (0, k, 2k, ..., k = cfg.guide_every). Revealed
    rows go to guide pinned at their tokens (a one-hot q: no gradient): nothing is read back."""
    P = prompt_length
    cfg.check()
    expect(type(P) is int and P >= 0, f"prompt_length must be an int >= 0, got {P!r}")

    def hook(step, tokens, logits):
        expect(tokens.dim() == 2 and tokens.shape[1] > P and logits.shape[:2] == tokens.shape,
               f"hook: tokens (N, P + L) and logits (N, P + L, V), P = {P}, do not fit "
               f"{tuple(tokens.shape)}, {tuple(logits.shape)}")
        if not cfg.guided or step % cfg.guide_every:
            return logits
        y = tokens[:, P:]                                        # (N, L) the response
        at = y.unsqueeze(-1)
        masked = at == mask_id                                   # (N, L, 1)
        psi = logits[:, P:].float().masked_fill(~masked, -math.inf)
        psi = psi.scatter(-1, at, torch.where(masked, psi.gather(-1, at), 0))   # revealed: pinned
        every = torch.arange(y.shape[1], device=y.device).expand_as(y)
        psi, _ = guide(psi, y, every, reward, embedding, generator, cfg.method, cfg.M, cfg.lr,
                       cfg.temperature, cfg.top_p, cfg.entropy_from)
        logits[:, P:] = torch.where(masked, psi.to(logits.dtype), logits[:, P:])
        return logits

    return hook


# =============================================================================
# What runs the method, not part of it: loading, the command line, files, the
# trace page, the benchmark. Nothing above this line uses anything below it.
# =============================================================================

import argparse
import contextlib
import csv
import errno
import hashlib
import html
import io
import json
import re
import stat
import sys
import tempfile
import time
import warnings
import weakref
from dataclasses import asdict

from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm


# -----------------------------------------------------------------------------
# 5. The reward model's text side: the vocabulary map, the chat slots, the text score


def vocab_map(dllm_tokenizer, rm_tokenizer, vocab_size, verbose=True):
    """The reward model's id of each dLLM token (vocab_size,), matched by identical string
    (else unk, or eos), and the share of the dLLM's tokens found."""
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

    fallbacks = (rm_tokenizer.unk_token_id, rm_tokenizer.eos_token_id, rm_tokenizer.pad_token_id, 0)
    fallback = next(i for i in fallbacks if i is not None)
    return ids.masked_fill(ids < 0, fallback), share


def rm_chat(rm_tokenizer, prompt, response):
    """The reward model's chat text for one (prompt, response) pair."""
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return rm_tokenizer.apply_chat_template(turns, tokenize=False)


SLOT = "ENTRGIRESPONSESLOT"     # a stand-in reply, to split the chat template at


def rm_slots(rm_tokenizer, prompts):
    """The reward model's token ids before and after the reply in each prompt's chat:
    (prefixes, suffixes), a list each."""
    slots = [SLOT * (len(prompt) // len(SLOT) + 1) for prompt in prompts]   # longer than the prompt
    chats = [rm_chat(rm_tokenizer, prompt, slot) for prompt, slot in zip(prompts, slots)]
    parts = [chat.split(slot) for chat, slot in zip(chats, slots)]
    expect(all(len(p) == 2 and p[1] for p in parts),
           "the reward model's chat template does not place the reply verbatim, once, with text "
           "after it (where the score is read): use a reward model whose template does")

    def ids(text):
        return rm_tokenizer(text, add_special_tokens=False)["input_ids"]

    return [ids(before) for before, _ in parts], [ids(after) for _, after in parts]


def stripped_ids(dllm_tokenizer, rm_tokenizer):
    """dLLM token ids that the reward model's chat template removes from the start of a reply:
    the newline tokens, where the template strips leading newlines (Qwen3's does)."""
    if rm_chat(rm_tokenizer, "x", "\n" + SLOT) != rm_chat(rm_tokenizer, "x", SLOT):
        return []
    ids = set()
    for n in range(1, 33):
        ids.update(dllm_tokenizer("\n" * n, add_special_tokens=False)["input_ids"])
    return sorted(i for i in ids if set(dllm_tokenizer.decode([i])) == {"\n"})


@torch.no_grad()
def score_texts(rm, rm_tokenizer, prompts, responses):
    """R(prompt, response) on text, tokenized by the reward model's own tokenizer (the paper's
    final score: Top@1 is its max over a prompt's K responses, Avg@N its mean)."""
    chats = [rm_chat(rm_tokenizer, p, r) for p, r in zip(prompts, responses)]
    rows = [rm_tokenizer(chat, add_special_tokens=False)["input_ids"] for chat in chats]
    width = max(map(len, rows))
    E = rm.get_input_embeddings().weight
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows], device=E.device)
    valid = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=E.device) > 0
    return rm_score(rm, hidden(rm, E[ids], valid))   # left-padded: the last position is real


@torch.no_grad()
def loglik_texts(lm, lm_tokenizer, prompts, responses):
    """The causal LM's reward on text: the mean log-likelihood of each response, tokenized by the
    LM's own tokenizer, and of the chat suffix after it, given the chat prefix (the authors'
    compute_discrete_reward_ar; the three parts tokenized apart, as the guided reward reads them)."""
    prefixes, suffixes = rm_slots(lm_tokenizer, prompts)
    device = lm.get_input_embeddings().weight.device
    R = []
    for prefix, suffix, response in zip(prefixes, suffixes, responses):
        reply = lm_tokenizer(response, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prefix + reply + suffix], device=device)
        lp = torch.log_softmax(lm(input_ids=ids).logits[0, len(prefix) - 1:-1].float(), -1)
        R.append(lp.gather(-1, ids[0, len(prefix):, None]).mean())
    return torch.stack(R)


def text_reward(rm):
    """How a reward model scores a text: a classifier's score, or a causal LM's log-likelihood."""
    return score_texts if isinstance(getattr(rm, "score", None), torch.nn.Linear) else loglik_texts


# -----------------------------------------------------------------------------
# 6. Loading: Dream and LLaDA through transformers' own classes, any sequence-classification RM


# seconds the hub may take to answer before a download is given up (a slow proxy: set ENTRGI_HUB_WAIT)
HUB_WAIT = float(os.environ.get("ENTRGI_HUB_WAIT", 30))


def resolve(name_or_path):
    """A local directory, or a hub name downloaded (or found in the cache): (its path, its
    config.json), once no file of it is damaged (JSON that is not JSON, a .safetensors file cut
    short) and the weights it lists are all there."""
    first = name_or_path.split("/")[0]
    hub_name = re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", name_or_path) and not os.path.isdir(first)

    if os.path.isfile(name_or_path):
        raise InputError(f"model {name_or_path!r} is a file: pass the folder that holds its "
                         "config.json, or a hub name (owner/name)")
    if not os.path.isdir(name_or_path) and not hub_name:
        raise InputError(f"model {name_or_path!r}: no such directory here, and not a hub name "
                         "(owner/name): check the path")

    path = name_or_path if os.path.isdir(name_or_path) else download(name_or_path)
    parsed = {}
    for file in sorted(f for f in os.listdir(path) if f.endswith((".json", ".safetensors"))):
        try:
            with open(os.path.join(path, file), "rb") as f:
                is_json = file.endswith(".json")
                parsed[file] = json.loads(f.read()) if is_json else safetensors_header(f)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise InputError(f"model {name_or_path!r}: {file} is damaged ({err}); "
                             "get it again") from None
        except OSError as err:
            raise InputError(f"model {name_or_path!r}: cannot read {file}: "
                             f"{err.strerror or err}") from None

    if not isinstance(parsed.get("config.json"), dict):
        raise InputError(f"model {name_or_path!r}: {path!r} holds no config.json with a JSON "
                         "object in it")

    index = parsed.get("model.safetensors.index.json") or {}
    shards = sorted(set((index.get("weight_map") or {}).values()) - set(parsed))
    weights = [f for f in os.listdir(path) if f.endswith((".safetensors", ".bin"))]
    if shards or not weights:
        raise InputError(f"model {name_or_path!r}: {path!r} lacks its weights "
                         f"({', '.join(shards[:3]) or 'no *.safetensors file'}); get them again")
    return path, parsed["config.json"]


def download(name):
    """The folder of hub model `name`, downloaded (or from the cache): a hub that does not answer
    within HUB_WAIT seconds, or cannot be reached, is said so in one line."""
    from huggingface_hub import HfApi, constants, snapshot_download
    where = f"the hub ({constants.ENDPOINT})"
    try:
        if not constants.HF_HUB_OFFLINE:
            HfApi().model_info(name, timeout=HUB_WAIT)       # a silent hub: given up here
        patterns = ["*.json", "*.safetensors", "*.txt", "*.jinja"]
        return snapshot_download(name, allow_patterns=patterns)
    except Exception as err:                             # the hub's, the network's, the cache's
        timed_out = "timeout" in type(err).__name__.lower() or "timed out" in str(err).lower()
        why = f"{where} did not answer within {HUB_WAIT:g} s" if timed_out else (
            f"{type(err).__name__}: check the name; the machine may be offline or {where} "
            "unreachable")
        raise InputError(f"cannot download model {name!r} ({why}): pass a local folder holding its "
                         "config.json. Without the hub, `python -m toy` and the test models run "
                         "here (README: Start here)") from None


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

    tensors = [t for k, t in header.items() if k != "__metadata__"]
    end = 8 + n + max((t["data_offsets"][1] for t in tensors), default=0)

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
            dream = {k: v for k, v in raw.items() if k not in drop}
            return tf.Qwen2Config(**dream, shift_logits=True)
        llada = {ours: raw[theirs] for theirs, ours in LLADA_CONFIG.items()}
        return tf.LlamaConfig(**llada, shift_logits=False,
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


def open_dllm(name_or_path):
    """What loading Dream or LLaDA needs before its weights, every check made: (path, kind,
    transformers config, tokenizer)."""
    import transformers as tf
    path, raw = resolve(name_or_path)
    kind = dllm_kind(name_or_path, raw)
    config = dllm_config(name_or_path, kind, raw)
    qwen2_fast = getattr(tf, "Qwen2TokenizerFast", tf.Qwen2Tokenizer)    # (4.x: the fast one)
    tokenizer_class = qwen2_fast if kind == "Dream" else tf.PreTrainedTokenizerFast
    tokenizer = loaded(name_or_path, "tokenizer", lambda: tokenizer_class.from_pretrained(path))
    mask_id = raw.get("mask_token_id")

    if not isinstance(mask_id, int) or not 0 <= mask_id < len(tokenizer):
        raise InputError(f"the tokenizer of {name_or_path!r} has no mask token (mask_token_id "
                         f"{mask_id}): a masked diffusion LM needs one")
    if len(tokenizer) > config.vocab_size:
        raise InputError(f"model {name_or_path!r}: its tokenizer has {len(tokenizer)} tokens, its "
                         f"config.json {config.vocab_size} rows of logits: they do not belong "
                         "together")
    if not tokenizer.chat_template:
        raise InputError(f"the tokenizer of {name_or_path!r} has no chat template: an instruct "
                         "model's folder has one")

    tokenizer.mask_token = tokenizer.convert_ids_to_tokens(mask_id)      # LLaDA's does not name it
    return path, kind, config, tokenizer


def dllm_logits(model, ids, valid, last=None):
    """ids, valid (B, T) -> logits (B, T, V), or the last `last` rows, row i predicting token i:
    Dream predicts token i at position i - 1 (position 0 keeps its own), LLaDA at position i."""
    T = ids.shape[1]
    shift = int(getattr(model.config, "shift_logits", False))
    rows = (torch.arange(T - (last or T), T, device=ids.device) - shift).clamp(min=0)
    return model(input_ids=ids, attention_mask=attention_bias(valid, False, model.dtype),
                 position_ids=(valid.cumsum(1) - 1).clamp(min=0), logits_to_keep=rows).logits


def make_denoiser(model, prompts, K, L):
    """Line 1's denoiser for a transformers model: denoiser(y (N, L)) -> fp32 logits (N, L, V)
    behind the prompts (lists of ids), K rows each. Each prompt's rows run on their own,
    unpadded: a prompt's logits do not depend on the prompts beside it."""
    longest = max(map(len, prompts)) + L
    room = model.config.max_position_embeddings
    expect(longest <= room, f"a prompt + L = {longest} tokens exceeds the dLLM's {room} positions")
    prompts = [torch.tensor([p], device=model.device).expand(K, -1) for p in prompts]

    def denoiser(y):
        expect(y.shape == (K * len(prompts), L), f"denoiser: y must be ({K * len(prompts)}, {L}), "
               f"K = {K} rows for each of its {len(prompts)} prompts, got {tuple(y.shape)}: one "
               "seed per prompt")
        ids = [torch.cat([prompt, y_i], 1) for prompt, y_i in zip(prompts, y.split(K))]
        logits = [dllm_logits(model, x, torch.ones_like(x, dtype=torch.bool), L) for x in ids]
        return torch.cat(logits).float()

    return denoiser


def load_dllm(name_or_path, device="cpu", dtype="auto", opened=None):
    """Dream or LLaDA (hub name, or directory laid out like the hub's) as transformers'
    Qwen2ForCausalLM or LlamaForCausalLM attending both ways, every weight found and used, no remote
    code: (model, tokenizer), frozen. opened: what open_dllm gave, where it was called already."""
    import transformers as tf
    path, kind, config, tokenizer = opened or open_dllm(name_or_path)
    mapping = LLADA_WEIGHTS if kind == "llada" else None
    model_class = tf.Qwen2ForCausalLM if kind == "Dream" else tf.LlamaForCausalLM
    weights_dtype = dtype_kwarg(pick_dtype(device, dtype))
    model, info = loaded(name_or_path, "weights", lambda: model_class.from_pretrained(
        path, config=config, key_mapping=mapping, output_loading_info=True, **weights_dtype))
    strict(name_or_path, f"{kind}'s", info)
    return bidirectional(model.to(device)).eval().requires_grad_(False), tokenizer


def strict(name, whose, info):
    """Every weight of the checkpoint used and every weight of the class found, as transformers'
    loading reports them (it fills a missing one at random and drops an unexpected one)."""
    missing = sorted(info["missing_keys"])
    unexpected = sorted(info["unexpected_keys"])
    if missing or unexpected:
        raise InputError(f"{name!r} does not hold {whose} weights: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")


# --reward -> the architectures it takes, and what its numbers are
REWARDS = {"score": "ForSequenceClassification", "loglik": "ForCausalLM"}
REWARD_NAMES = {"score": "the reward model's score", "loglik": "the causal LM's mean log-likelihood"}


def open_reward_model(name_or_path, reward="score", flag="--reward-model"):
    """What loading a reward model needs before its weights, every check made: (path, config.json,
    tokenizer). reward: score (a one-label sequence classifier) or loglik (a causal LM)."""
    from transformers import AutoTokenizer
    path, raw = resolve(name_or_path)
    architectures = raw.get("architectures") or []
    kinds = [k for k, tail in REWARDS.items() if any(a.endswith(tail) for a in architectures)]
    labels = raw.get("num_labels") or len(raw.get("id2label") or {0: ""})
    what = f"{name_or_path!r} ({', '.join(architectures) or raw.get('model_type')})"

    names = {"score": "a sequence classifier", "loglik": "a causal LM"}
    if reward not in kinds and kinds and flag == "--reward-model":
        raise InputError(f"{flag} {what} is {names[kinds[0]]}: pass --reward {kinds[0]} to guide "
                         f"by its {'score' if kinds[0] == 'score' else 'log-likelihood'}")
    if reward not in kinds:
        must = f"{flag} with --reward {reward}" if flag == "--reward-model" else flag
        raise InputError(f"{flag} {what} is not {names[reward]} (...{REWARDS[reward]}), as {must} "
                         "must be")
    if reward == "score" and labels != 1:
        raise InputError(f"the reward model {name_or_path!r} has {labels} labels, not one score")

    tokenizer = loaded(name_or_path, "tokenizer", lambda: AutoTokenizer.from_pretrained(path))
    if not tokenizer.chat_template:
        raise InputError(f"the reward model {name_or_path!r} has no chat template: it "
                         "cannot place a response")
    if len(tokenizer) > raw.get("vocab_size", len(tokenizer)):
        raise InputError(f"model {name_or_path!r}: its tokenizer has {len(tokenizer)} tokens, its "
                         f"config.json {raw['vocab_size']} embeddings: they do not belong together")
    try:
        rm_slots(tokenizer, ["a prompt"])
    except ValueError as err:
        raise InputError(f"reward model {name_or_path!r}: {err}") from None
    return path, raw, tokenizer


def load_reward_model(name_or_path, device="cpu", dtype="auto", opened=None, reward="score"):
    """A reward model with a chat template, (model, tokenizer), frozen: a one-label sequence
    classifier with a linear score head (reward="score"), or a causal LM ("loglik"), every weight
    found and used. opened: what open_reward_model gave, if called already."""
    import transformers as tf
    path, _, tokenizer = opened or open_reward_model(name_or_path, reward)
    auto = tf.AutoModelForSequenceClassification if reward == "score" else tf.AutoModelForCausalLM
    model, info = loaded(name_or_path, "weights", lambda: auto.from_pretrained(
        path, output_loading_info=True, **dtype_kwarg(pick_dtype(device, dtype))))
    strict(name_or_path, f"a {type(model).__name__}'s", info)

    if reward == "score" and not isinstance(getattr(model, "score", None), torch.nn.Linear):
        raise InputError(f"the reward model {name_or_path!r} ({type(model).__name__}) has no "
                         "linear `score` head on its last position, as Llama's, Qwen's and "
                         "Gemma's classifiers have")

    return model.to(device).eval().requires_grad_(False), tokenizer


def compile_models(dllm, rm):
    """torch.compile the forwards of the dLLM (one shape per prompt length) and of the reward
    model's body (its length dynamic), in place. It pays on a GPU."""
    dllm.forward = torch.compile(dllm.forward)
    rm.base_model.forward = torch.compile(rm.base_model.forward, dynamic=True)


def dllm_prompt_ids(tokenizer, prompt):
    """The dLLM's chat-formatted prompt, ready for the assistant's reply."""
    turn = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_fits(opened, rm_opened, prompts, L):
    """Each prompt's chat + L within the dLLM's positions, and its reward-model chat within the
    reward model's: a prompt that does not fit is named."""
    _, _, config, tokenizer = opened
    _, raw, rm_tokenizer = rm_opened
    rm_room = raw.get("max_position_embeddings") or math.inf
    prefixes, suffixes = rm_slots(rm_tokenizer, prompts)
    for i, prompt in enumerate(prompts):
        name = "the prompt" if len(prompts) == 1 else f"prompt {i} (from 0)"
        n = len(dllm_prompt_ids(tokenizer, prompt)) + L
        if n > config.max_position_embeddings:
            raise InputError(f"{name} needs {n} positions with L = {L}, more than the dLLM's "
                             f"{config.max_position_embeddings}: shorten it or lower "
                             "--max-new-tokens")
        n = len(prefixes[i]) + L + len(suffixes[i])
        if n > rm_room:
            raise InputError(f"{name} needs {n} positions with L = {L}, more than the reward "
                             f"model's {rm_room}: shorten it or lower --max-new-tokens")


def end_ids(tokenizer):
    """Token ids that end a response: eos, pad, and a chat turn's end (<|im_end|>,
    <|eot_id|>) where present."""
    vocab = tokenizer.get_vocab()
    turn_ends = (vocab.get("<|im_end|>"), vocab.get("<|eot_id|>"))
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id, *turn_ends}
    return sorted(ids - {None})


def decode(tokenizer, y, eos_ids):
    """(N, L) tokens -> N response strings, each cut at its first end token."""
    keep = reads(y, torch.as_tensor(eos_ids, device=y.device))
    return [tokenizer.decode(row[k].tolist(), skip_special_tokens=True) for row, k in zip(y, keep)]


# -----------------------------------------------------------------------------
# 7. The command line


class InputError(ValueError):
    """Bad input: the command line prints the message and exits with status 2."""


class WriteError(OSError):
    """A write the machine refused (a full disk): the command line prints the message
    and exits with status 74."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="entrgi.py", description="EntRGi: steer a diffusion LM with a "
                                "reward model. Start with `python -m toy` (any CPU, seconds).",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    input_flags(p.add_argument_group("prompts, models and files").add_argument)
    method_flags(p.add_argument_group("the method (the paper's symbols)").add_argument)
    run_flags(p.add_argument_group("the machine and the benchmark").add_argument)
    return p, p.parse_args(argv)


EPILOG = """environment variables read:
  OMP_NUM_THREADS     torch's CPU threads (unset: one per core that other work leaves free, said
                      at the start)
  ENTRGI_HUB_WAIT     seconds the hub may take to answer before a download is given up (30)
  HF_HUB_OFFLINE=1    no hub: models from local folders or the hub's cache only
  HF_ENDPOINT, HF_HOME  the hub's address; where its downloads are kept
  WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE  set by torchrun: one process per GPU
  CUBLAS_WORKSPACE_CONFIG  set to :4096:8 by --deterministic where unset (cuBLAS's rule)

benchmark presets (random weights; GiB: the weights and E^R, bfloat16 on CUDA, float32 on a CPU):
  real       Dream-v0-Instruct-7B + Qwen3-1.7B (Skywork-Reward-V2-Qwen3-1.7B's body): 18.0, 35.9
  real-0.6b  Dream-v0-Instruct-7B + Qwen3-0.6B: 15.6, 31.2
  llada      LLaDA-8B-Instruct + Qwen3-1.7B: 18.6, 37.2
  small      |V| = 32768, 4 layers, widths 512 and 384: 0.1, 0.3
  tiny       the tests' models: |V| = 384 and 360, 2 layers of width 64
  (the reward model: a one-label classifier, or with --reward loglik a causal LM; with
  --benchmark-layers 2 on a CPU, real takes 8.5 GiB and, with --benchmark-steps 1, 4.5 minutes
  on an idle 2-core machine; small takes 40 s)
"""


def input_flags(add):
    add("--prompt", help="the user prompt")
    add("--prompts-file", help=f"many prompts, needs --output: {FORMATS}")
    add("--prompt-field", default="prompt", help="the field (JSON) or column (CSV, TSV) of a "
        "prompts file that holds the prompt (default: %(default)s)")
    add("--batch-size", type=int, default=1,
        help=f"prompts per batch (each prompt: K rows), in [1, {2**16}] (default: %(default)s)")
    add("--dllm", default="Dream-org/Dream-v0-Instruct-7B",
        help="diffusion LM, Dream or LLaDA: hub name or folder (default: %(default)s)")
    add("--reward", choices=list(REWARDS), default="score", help="score: a sequence classifier's "
        "score (the paper's); loglik: a causal LM's mean log-likelihood of the response, the "
        "authors' second reward (default: %(default)s)")
    add("--reward-model", default="Skywork/Skywork-Reward-V2-Qwen3-1.7B", help="reward model: hub "
        "name or folder, a ...ForSequenceClassification (--reward score) or a ...ForCausalLM "
        "with a chat template (--reward loglik), such as Qwen/Qwen3-0.6B (default: %(default)s)")
    add("--score-model", help="a sequence-classification reward model, an independent judge of "
        "the final texts")
    add("--output", help="FILE.jsonl: one line per prompt and method as each finishes; the same "
        "command again resumes")
    add("--trace", help="with --prompt: FILE.html, a self-contained page of the denoising")


def method_flags(add):
    def number(flag, field, kind, default, what):
        low, high = RANGES[field]
        add(flag, type=kind, default=default,
            help=f"{what}, in [{low:g}, {high:g}] (default: %(default)s)")

    add("--method", default="entrgi", choices=[*METHODS, "all"], help="entrgi; aps (straight-"
        "through); soft (expectation); bon (best of K, unguided); all four (default: %(default)s)")
    number("--samples", "K", int, 4, "K, trajectories per prompt")
    number("--steps", "T", int, 128, "T, denoising steps (past L, the extra steps reveal nothing)")
    number("--max-new-tokens", "L", int, 128, "L, response length in tokens")
    add("--block-length", type=int, help="tokens per block, blocks revealed left to right: it "
        "divides L, and the number of blocks divides T (default: L, one block)")
    number("--guidance-steps", "M", int, 3, "M, Adam steps on psi per denoising step")
    number("--guide-every", "guide_every", int, 1, "k: guide the steps 0, k, 2k, ... only")
    number("--lr", "lr", float, 0.5, "eta, Adam's learning rate on psi")
    number("--temperature", "temperature", float, 0.7, "tau, the sampling temperature")
    number("--top-p", "top_p", float, 0.95, "nucleus mass for sampling (0: the likeliest token)")
    add("--entropy-from", choices=["sampling", "model"], default="sampling",
        help="the entropy weight w from softmax(psi / tau) (sampling, the paper) or softmax(psi) "
             "(model, the scripts) (default: %(default)s)")
    add("--remasking", choices=REMASKING, default="entropy",
        help="which masked positions a step reveals first (default: %(default)s)")
    add("--schedule", choices=["dream", "linear"], default="dream",
        help="tokens revealed per step (default: %(default)s)")
    add("--no-eos-last", dest="eos_last", action="store_false", help="reveal a sampled end token "
        "like any other (without this flag it is revealed after every other token)")
    add("--seed", type=int, default=0,
        help="in [0, 2**63); prompt i of a file gets seed + i (default: %(default)s)")


def run_flags(add):
    add("--device", help="cpu, cuda or cuda:N (default: cuda where there is one)")
    add("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on CUDA, float32 on a CPU (default: %(default)s)")
    add("--compile", action="store_true", help="torch.compile both models' forwards (pays on a "
        "GPU; compiling takes minutes at the real size)")
    add("--deterministic", action="store_true", help="CUDA: deterministic kernels only (the same "
        "command gives the same tokens on the same GPU; attention runs its plain math kernel)")
    add("--benchmark", choices=list(PRESETS), help="time a guided step of random models of a "
        "preset's sizes (below); refused where the device lacks the memory")
    add("--benchmark-steps", type=int, default=3,
        help="repetitions of each timing, in [1, 1000] (default: %(default)s)")
    add("--benchmark-layers", type=int,
        help="N layers in both models, in [1, 1000], the vocabularies and widths kept")
    add("--benchmark-first-step", action="store_true",
        help="time the first step (m = L masked), not the average one")
    add("--benchmark-memory", action="store_true",
        help="the first step's memory at the preset's full size, traced on fake tensors: no "
             "weights, no GPU, seconds")


FLAGS = {"method": "--method", "K": "--samples", "T": "--steps", "L": "--max-new-tokens",
         "M": "--guidance-steps", "lr": "--lr", "temperature": "--temperature", "top_p": "--top-p",
         "seed": "--seed", "block_length": "--block-length", "entropy_from": "--entropy-from",
         "remasking": "--remasking", "schedule": "--schedule", "guide_every": "--guide-every"}


def configs(args):
    """One checked Config per method asked for; a setting out of its range is refused, naming its
    flag and the range."""
    shared = dict(K=args.samples, T=args.steps, L=args.max_new_tokens, M=args.guidance_steps,
                  lr=args.lr, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                  block_length=args.block_length, entropy_from=args.entropy_from,
                  remasking=args.remasking, schedule=args.schedule, eos_last=args.eos_last,
                  guide_every=args.guide_every)
    methods = METHODS if args.method == "all" else [args.method]
    try:
        return [Config(method, **shared).check() for method in methods]
    except ValueError as err:
        field = str(err).split()[0]
        raise InputError(f"{FLAGS.get(field, field)}: {err}") from None


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


def generate(models, prompts, seeds, cfg, on_step=None, judge=None):
    """K responses for each prompt scored on text by the reward model (and a judge, (model,
    tokenizer), if given): one result dict per prompt. top1_score: the judge's score of the
    best_response, the one R ranks first."""
    dllm, tok, rm, rm_tok, vocab, embedding = models
    eos = end_ids(tok)
    prompt_ids = [dllm_prompt_ids(tok, p) for p in prompts]
    denoiser = make_denoiser(dllm, prompt_ids, cfg.K, cfg.L)
    score = text_reward(rm)
    if score is score_texts:
        reward = make_reward(rm, *rm_slots(rm_tok, prompts), cfg.K, eos, stripped_ids(tok, rm_tok))
    else:
        reward = make_loglik_reward(rm, *rm_slots(rm_tok, prompts), cfg.K, eos, vocab)
    mask_id = tok.mask_token_id
    y, skipped = sample(denoiser, reward, embedding, seeds, mask_id, eos, cfg, on_step=on_step)

    if skipped.any():
        steps = skipped.nonzero().flatten().tolist()
        warnings.warn(f"{int(skipped.sum())} guidance updates skipped at steps {steps} (from 0): "
                      "the reward or its gradient was not finite")

    texts = decode(tok, y, eos)
    results = []

    for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
        responses = texts[i * cfg.K:(i + 1) * cfg.K]
        # per prompt: no batch-mates' padding
        R = score(rm, rm_tok, [prompt] * cfg.K, responses).tolist()
        best = R.index(max(R))
        scored = [{"text": t, "reward": r} for t, r in zip(responses, R)]
        results.append({"method": cfg.method, "seed": seed, "responses": scored,
                        "best_response": responses[best], "top1_reward": R[best],
                        "avg_reward": sum(R) / len(R)})
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
    fill = {"PROMPT": html.escape(prompt), "SETTINGS": settings_list(settings),
            "REWARD": html.escape(f"{REWARD_NAMES[settings['reward']]}, {settings['reward_model']}"),
            "RUNS": "".join(columns), "STEPS": json.dumps(steps), "LAST": str(len(steps) - 1)}
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
    head = (f'<section><h2>{html.escape(run["method"])}</h2>'
            f'<p class="score">{top1} &middot; {avg}</p>')
    eos = torch.tensor(end_ids(tokenizer))
    rows = []

    for j, (row, at, marked) in enumerate(zip(y, came.tolist(), changed.tolist())):
        ids = row[: int(reads(row[None], eos).sum())].tolist()          # up to the first end token
        # dots: past the end
        pieces = token_texts(tokenizer, ids) + ["\u00b7"] * (len(at) - len(ids))
        classes = [("c" if marked[l] else "") + (" e" if l >= len(ids) else "")
                   for l in range(len(at))]
        spans = "".join(f'<span data-k="{at[l]}" class="{classes[l]}">{html.escape(piece)}</span>'
                        for l, piece in enumerate(pieces))
        label = f"trajectory {j}: reward {rewards[j]:.4f}" + (" &#9733; best" if j == best else "")
        kind = "t best" if j == best else "t"
        rows.append(f'<div class="{kind}"><strong>{label}</strong>\n{spans}</div>')

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
    items = (f"<div><dt>{html.escape(str(name))}</dt><dd>{html.escape(json.dumps(value))}</dd>"
             "</div>" for name, value in settings.items())
    return f'<dl class="settings">{"".join(items)}</dl>'


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>EntRGi denoising trace</title><style>
body { font: 14px/1.45 sans-serif; margin: 1em 1.5em; color: #222 }
h1 { font-size: 1.4em; margin: .2em 0 } h2 { font-size: 1.15em; margin: .3em 0 0 }
.score { margin: 0 0 .4em }
.settings { display: flex; flex-wrap: wrap; gap: .2em 1.2em; margin: .4em 0; font-size: 12px;
            color: #555 }
.settings div { display: flex; gap: .3em; min-width: 0 } .settings dt { font-weight: bold }
.settings dd { margin: 0; overflow-wrap: anywhere }
#bar { position: sticky; top: 0; z-index: 1; background: #fff; padding: .4em 0;
       border-bottom: 1px solid #ccc }
#bar button { font: inherit; min-width: 2.4em } #k { width: min(40em, 60%); vertical-align: middle }
#runs { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 18em), 1fr));
        gap: 1em }
#runs section { min-width: 0 }
.t { border: 1px solid #ddd; padding: .4em .6em; margin: .5em 0; white-space: pre-wrap;
     overflow-wrap: anywhere; font: 12px/1.6 monospace }
.t.best { border: 2px solid #2a7d2a } .new { background: #ffd95a } .e { color: #bbb }
.m { color: transparent !important; background: #e4e4e4 }
.c:not(.m) { text-decoration: underline wavy red }
</style></head><body><h1>EntRGi denoising trace</h1><p><strong>Prompt:</strong> PROMPT</p>
<p><strong>Scored by:</strong> REWARD</p>SETTINGS
<div id="bar"><button id="back" title="previous step (left arrow)">&#9664;</button>
<button id="play" title="play or pause (space)">play</button>
<button id="next" title="next step (right arrow)">&#9654;</button>
<input id="k" type="range" min="0" max="LAST" aria-label="step"> <span id="at"></span><br><small>
<span class="m">&emsp;&emsp;</span> masked, <span class="new">revealed now</span>,
<span class="c">not the unguided step's most likely token</span>,
<span class="e">&middot;</span> after the end; keys: &larr; &rarr;, Home, End, space</small></div>
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


# the prompts files read (--help, and each refusal, name them)
FORMATS = ("JSON lines (an object a line), a JSON array of objects or of strings, CSV or TSV with a "
           "header row naming the prompt column, or text (a prompt a line)")


def read_prompts(path, field="prompt"):
    """Prompt records from a prompts file in one of FORMATS: JSON lines by the name (.jsonl,
    .ndjson, .json, any case) or by the content (every line an object), the prompt in `field`,
    the other fields kept; a JSON array; CSV or TSV by the name (.csv, .tsv) or by a first line
    of names, one of them `field` (a header row is never a prompt); else text, as {field: line}.
    A file mixing objects and text lines is refused. A byte-order mark and CRLF line ends are
    no part of any prompt."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:   # utf-8-sig: no byte-order mark
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read --prompts-file {path!r}: {err}") from None

    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    objects = [n for n, line in lines if isinstance(json_or_none(line), dict)]
    whole = json_or_none(text)
    whole = [whole] if isinstance(whole, dict) else whole
    delimiter = table_delimiter(path, lines[0][1] if lines else "", field)
    if isinstance(whole, list):
        strings = all(isinstance(r, str) for r in whole)
        numbered = [(f"item {i}", {field: r} if strings else r) for i, r in enumerate(whole, 1)]
    elif delimiter:
        numbered = table_rows(path, text, field, delimiter)
    elif path.lower().endswith((".jsonl", ".ndjson", ".json")) or len(objects) == len(lines):
        numbered = [(f"line {n}", json_or_none(line)) for n, line in lines]
    elif objects:
        text_line = next(n for n, _ in lines if n not in objects)
        raise InputError(f"{path}: line {objects[0]} is a JSON object, line {text_line} is not: "
                         "make every line a JSON object (JSON lines) or none (one prompt per line)")
    else:
        numbered = [(f"line {n}", {field: line}) for n, line in lines]

    records = [prompt_record(path, where, record, field) for where, record in numbered]
    if not records:
        raise InputError(f"--prompts-file {path!r} holds no prompt")
    return records


def table_delimiter(path, first, field):
    """The delimiter of a CSV or TSV prompts file, by its name or by its first line (names only,
    one of them `field`: a header row); None for other files."""
    for suffix, delimiter in ((".csv", ","), (".tsv", "\t")):
        if path.lower().endswith(suffix):
            return delimiter
    for delimiter in ("\t", ","):
        cells = next(csv.reader([first], delimiter=delimiter))
        if field in cells and all(re.fullmatch(r"[\w.-]+", cell) for cell in cells):
            return delimiter
    return None


def table_rows(path, text, field, delimiter):
    """The rows of a CSV or TSV prompts file (the standard library's csv reads it) under its
    header row: [(where, {column: value})]."""
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    header = reader.fieldnames or []
    if field not in header:
        raise InputError(f"{path}: its header row ({', '.join(header)}) names no {field!r} column: "
                         "name the prompt column there, or pass --prompt-field")
    rows = []
    for row in reader:
        if None in row or None in row.values():
            raise InputError(f"{path} line {reader.line_num}: {len(header)} columns in the header, "
                             "another number in this row: quote values that hold the delimiter")
        rows.append((f"line {reader.line_num}", row))
    return rows


def json_or_none(text):
    try:
        return json.loads(text)
    except ValueError:
        return None


def prompt_record(path, where, record, field):
    """A line (or an array's item) of a prompts file, checked: a JSON object with a text prompt in
    `field` and no field named like one a result adds."""
    if not isinstance(record, dict):
        raise InputError(f"{path} {where} is not a JSON object (nor, in an array of strings, a "
                         f"string): the prompts files read are {FORMATS}")
    if field not in record:
        raise InputError(f'{path} {where} has no prompt: it needs a non-empty "{field}" '
                         'field (--prompt-field)')
    if not isinstance(record[field], str):
        kind = type(record[field]).__name__
        raise InputError(f'{path} {where}: its "{field}" field is {kind}, not text: a prompt is one '
                         "string (--prompt-field names another field)")
    check_text(record[field], f"{path} {where}")
    ours = sorted(set(record) & OUR_FIELDS - {field})
    if ours:
        raise InputError(f'{path} {where} has a field "{ours[0]}", a name entrgi.py writes in each '
                         "result: rename it in the prompts file")
    return record


# what a result line holds besides the prompt file's own fields
OUR_FIELDS = {"index", "method", "seed", "responses", "best_response", "top1_reward", "avg_reward",
              "top1_score", "avg_score", "settings", "summary"}


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

    try:
        f = open(path, "ab")
    except OSError as err:
        raise InputError(f"cannot write --output {path!r}: {err.strerror or err}") from None

    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        f.close()
        if err.errno not in (errno.EAGAIN, errno.EACCES):     # a file system without locks
            return contextlib.nullcontext()
        raise InputError(f"--output {path!r} is being written by another run (the same command "
                         "started twice?): wait for it, or pass another --output") from None

    return f


def regular_file(path):
    """A file that can be read back and truncated (or none yet): not a pipe, a
    terminal or /dev/stdout."""
    return not os.path.exists(path) or stat.S_ISREG(os.stat(path).st_mode)


def read_output(path, prompts, field, settings):
    """--output as one run's ledger: the (index, method) pairs an earlier run of this command wrote,
    the byte length of its whole lines (a line without its newline was never finished), and
    whether a summary follows the last result. Refused, naming the lines: a file with lines of
    two runs, of another command (prompts, settings or weights), or with a result twice."""
    if not regular_file(path):                           # a pipe, /dev/stdout: never read back
        return set(), 0, False
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        return set(), 0, False
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read --output {path!r} to resume from it: {err}") from None

    whole = text[: text.rfind("\n") + 1]
    done = {}                                            # (index, method) -> its line
    first = None                                         # the first line and its settings
    summarized = False
    for n, line in enumerate(whole.splitlines(), 1):
        r = json_or_none(line)
        r = r.get("summary", r) if isinstance(r, dict) else {}
        i = r.get("index")
        summarized = "table" in r
        if not isinstance(r.get("settings"), dict) or not summarized and not (
                type(i) is int and 0 <= i < len(prompts) and r.get(field) == prompts[i][field]
                and r.get("method") in METHODS):
            raise InputError(f"--output {path!r} line {n} was not written by this command (it is "
                             "no result of this prompts file): pass another --output")
        first = first or (n, r["settings"])
        if r["settings"] != first[1]:
            differs(path, f"lines {first[0]} and {n} come from two runs", first[1], r["settings"])
        if r["settings"] != settings:
            differs(path, f"line {n} was written with other settings than this command's", settings,
                    r["settings"])
        if summarized:
            continue
        if (i, r["method"]) in done:
            raise InputError(f"--output {path!r} lines {done[i, r['method']]} and {n} both hold "
                             f"prompt {i}'s {r['method']} result: it is no one run's ledger; "
                             "pass another --output")
        done[i, r["method"]] = n

    return set(done), len(whole.encode("utf-8")), summarized


def differs(path, what, ours, theirs):
    """Refuses --output, saying `what` and the first setting that differs."""
    key = next(k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k))
    raise InputError(f"--output {path!r}: {what} ({key} = {theirs.get(key)!r}, not "
                     f"{ours.get(key)!r}): refusing to mix them; pass another --output")


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
                raise OSError(errno.ENOSPC, f"only {n} of the line's {len(line)} bytes were "
                              "written (a full disk?)")
    except OSError as err:
        raise WriteError(f"cannot write --output {path!r}: {err.strerror or err}") from None


def write_page(path, text, flag="--trace"):
    """The --trace page (or the benchmark's JSON), all or nothing: written to a new temporary file
    beside it (never one that exists, nor a link), then renamed over it; the temporary file does
    not outlive a failure or an interruption."""
    temporary = None
    try:
        fd, temporary = tempfile.mkstemp(".tmp", os.path.basename(path) + ".",
                                         os.path.dirname(os.path.abspath(path)))
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(temporary, 0o666 & ~umask())
        os.replace(temporary, path)
    except BaseException as err:
        with contextlib.suppress(OSError, TypeError):
            os.remove(temporary)
        if not isinstance(err, OSError):
            raise
        raise WriteError(f"cannot write {flag} {path!r}: {err.strerror or err}") from None


def umask():
    """The process's file mode mask (read by setting it, then set back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def followed(path):
    """path, or, where it is a symbolic link to a file (or to a name to create), the file it leads
    to: every write (the output, the page, its temporary file, the lock) reaches the target and
    never replaces the link. A link to a device or a pipe (/dev/stdout) is written through."""
    if path is None or not os.path.islink(path):
        return path
    target = os.path.realpath(path)
    return target if os.path.isfile(target) or not os.path.exists(path) else path


def check_run(args):
    """A run's checks before any model: (a Config per method, the prompt records, the
    settings of every result)."""
    cfgs = configs(args)
    one = args.prompt is not None

    checks = ((one == (args.prompts_file is not None), "pass one of --prompt TEXT or --prompts-file FILE"),
              (not one and not args.output, "--prompts-file needs --output FILE.jsonl: results go there"),
              (not one and args.trace, "--trace draws one prompt: use it with --prompt"),
              (not 1 <= args.batch_size <= 2**16,
               f"--batch-size must lie in [1, 65536], got {args.batch_size}"))
    for bad, message in checks:
        if bad:
            raise InputError(message)

    files = [(args.output, "--output"), (args.trace, "--trace"), (args.prompts_file, "--prompts-file")]
    named = [(path, flag) for path, flag in files if path is not None]
    for path, flag in named:
        if not path.strip():
            raise InputError(f"{flag} names no file: pass a file name")
    for j, (first, flag) in enumerate(named):
        same = [other for path, other in named[j + 1:]
                if os.path.realpath(path) == os.path.realpath(first)]
        if same:
            raise InputError(f"{flag} and {same[0]} name the same file {first!r}: pass two files")
    args.output = followed(args.output)
    args.trace = followed(args.trace)
    for path, flag in ((args.output, "--output"), (args.trace, "--trace")):
        if path:
            check_writable(path, flag)

    if one:
        check_text(args.prompt, "--prompt")

    field = args.prompt_field
    prompts = [{field: args.prompt}] if one else read_prompts(args.prompts_file, field)
    if args.seed + len(prompts) - 1 >= 2**63:
        raise InputError(f"--seed: prompt i gets seed + i, which must stay below 2**63: the seed "
                         f"must be at most {2**63 - len(prompts)} for {len(prompts)} prompts")
    settings = {k: v for k, v in asdict(cfgs[0]).items() if k != "method"}
    # one spelling a folder
    where = lambda name: os.path.realpath(name) if name and os.path.isdir(name) else name
    settings.update(dllm=where(args.dllm), reward=args.reward, reward_model=where(args.reward_model),
                    score_model=where(args.score_model), dtype=args.dtype,
                    prompt_field=args.prompt_field, batch_size=args.batch_size,
                    compile=args.compile, deterministic=args.deterministic)
    return cfgs, prompts, settings


def check_writable(path, flag):
    """An --output or --trace the machine will write, found before any model: not a folder, in
    a folder that exists, and opened for appending, writing nothing (a file it creates is removed
    again), without waiting on a pipe that nobody reads: a read-only file or file system, /proc,
    /sys are refused."""
    if os.path.isdir(path) or path.endswith(os.sep):
        raise InputError(f"cannot write {flag} {path!r}: it is a folder")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise InputError(f"cannot write {flag} {path!r}: its folder does not exist")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f"cannot write {flag} {path!r}: the file is read-only")

    existed = os.path.exists(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.lseek(fd, 0, os.SEEK_END)             # as an append does (/proc refuses it)
        finally:
            os.close(fd)
    except OSError as err:
        why = "a pipe that nothing reads" if err.errno == errno.ENXIO else err.strerror or err
        raise InputError(f"cannot write {flag} {path!r}: {why}") from None
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
    total = sum(len(left) for _, left in todo)
    progress = {"total": total, "done": 0, "began": time.perf_counter()}

    for b in range(0, rounds * args.batch_size, args.batch_size):
        error = None
        try:
            for cfg in cfgs:
                batch = [i for i, left in todo[b:b + args.batch_size] if cfg.method in left]
                if batch:
                    run_batch(args, models, judge, cfg, prompts, settings, batch, results, traces,
                              progress)
        except (InputError, WriteError) as err:
            error = err
        agree(world, error)

    return results, traces


def run_batch(args, models, judge, cfg, prompts, settings, batch, results, traces, progress):
    """One method on a batch of prompts: each result checked, printed, appended to --output (the
    results a refused write leaves unwritten go to standard output: none is lost)."""
    trace = []
    one = args.prompt is not None
    with tqdm(total=cfg.T, desc=f"{cfg.method} denoising", file=sys.stderr, disable=not one) as bar:
        def on_step(k, y, likely):
            bar.update(k + 1 - bar.n)
            if args.trace:
                trace.append((k, y, likely))

        texts = [prompts[i][args.prompt_field] for i in batch]
        out = generate(models, texts, [cfg.seed + i for i in batch], cfg, on_step, judge)

    for i, result in zip(batch, out):
        scores = [v for r in result["responses"] for k, v in r.items() if k in ("reward", "score")]
        if not all(map(math.isfinite, scores)):
            raise InputError(f"prompt {i}, {cfg.method}: a response's score is {scores} (not a "
                             "number): the reward model's weights or --dtype (float16 "
                             "overflows) are at fault")

    records = [{**prompts[i], "index": i, **result, "settings": settings}
               for i, result in zip(batch, out)]
    for n, record in enumerate(records):
        for j, r in enumerate(record["responses"] if one else []):
            judged = f", judge's score {r['score']:.4f}" if judge else ""
            reward = f"reward {r['reward']:.4f}{judged}"
            show(f"--- {cfg.method} trajectory {j}: {reward}\n{r['text']}\n")
        try:
            if args.output:
                append_line(args.output, record)
        except WriteError as err:
            show("\n".join(json.dumps(r) for r in records[n:]))
            raise WriteError(f"{err} (the {plural(len(records) - n, 'result')} it did not take: on "
                             "standard output)") from None
        results.append(record)
        traces.append(trace)
        say_progress(progress, record, cfg)


def say_progress(progress, record, cfg):
    """One line a result: where the run is, its seconds per result, the time left."""
    progress["done"] += 1
    done = progress["done"]
    total = progress["total"]
    seconds = time.perf_counter() - progress["began"]
    left = f", about {seconds / done * (total - done):.0f} s left" if done < total else ""
    print(f"prompt {record['index']} {cfg.method} ({done} of {total}): Top@1 "
          f"{record['top1_reward']:.4f}  Avg@{cfg.K} {record['avg_reward']:.4f}  "
          f"{seconds / done:.1f} s per result{left}", file=sys.stderr)


def agree(world, error):
    """Under torchrun, every process learns the first error any process met, and raises it: all end
    together, with the same line, instead of waiting for one that has gone."""
    if world > 1:
        errors = [None] * world
        mine = None if error is None else (type(error).__name__, str(error))
        torch.distributed.all_gather_object(errors, mine)
        first = next((e for e in errors if e), None)
        kind = WriteError if first and first[0] == "WriteError" else InputError
        error = None if first is None else kind(first[1])
        if error is not None:                            # every process says it before any leaves
            print(f"entrgi.py: error: {error}", file=sys.stderr, flush=True)
            leave(74 if isinstance(error, WriteError) else 2)

    if error is not None:
        raise error


def summarize(args, results, prompts, settings, new, seconds, append=True):
    """Every result so far (with --output, the file's): each method's mean Top@1 and Avg@N,
    appended (where `append`), then printed."""
    if args.output and regular_file(args.output):
        with open(args.output, encoding="utf-8") as f:
            results = [r for r in map(json.loads, f) if "summary" not in r]

    keys = ["top1_reward", "avg_reward"] + (["top1_score", "avg_score"] if args.score_model else [])
    rows = {method: [r for r in results if r["method"] == method] for method in METHODS}
    table = {method: {"prompts": len(rs), **{k: sum(r[k] for r in rs) / len(rs) for k in keys}}
             for method, rs in rows.items() if rs}

    # before printing: a reader gone from stdout loses nothing
    if args.output and append:
        append_line(args.output, {"summary": {
            "prompts": len(prompts), "results": len(results), "new_results": new, "settings": settings,
            "seconds_per_result": seconds / new if new else None, "table": table}})

    show(f"{plural(len(results), 'result')} for {plural(len(prompts), 'prompt')}, {new} new, "
         f"scored by {REWARD_NAMES[settings['reward']]}")
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
    share the prompts); a summary. --output is held for the run: another run on it is refused, under
    torchrun too (its first process holds it)."""
    cfgs, prompts, settings = check_run(args)
    device = pick_device(args.device)
    world, rank = join_processes(device)
    lock = contextlib.nullcontext()
    error = None
    try:
        if args.output and rank == 0:
            lock = hold(args.output)
    except InputError as err:
        error = err
    agree(world, error)
    with lock:
        run_checked(args, cfgs, prompts, settings, device, world, rank)


def run_checked(args, cfgs, prompts, settings, device, world, rank):
    """`run` after the checks, with --output held."""
    error = None
    summarized = False
    try:
        opened = open_models(args, prompts)
        settings.update(identities(opened))
        done = set()                                     # (index, method) pairs already written
        whole = 0                                        # the bytes of their whole lines
        if args.output:
            done, whole, summarized = read_output(args.output, prompts, args.prompt_field, settings)
        if args.trace and done:
            raise InputError(f"--output {args.output!r} holds this run already: to trace it, "
                             "pass another --output")
        models, judge = load_models(args, opened, device)
    except InputError as err:
        error = err
    agree(world, error)
    cut_unfinished(args, whole, rank, world)

    todo = [(i, {c.method for c in cfgs} - {method for j, method in done if j == i})
            for i in range(rank, len(prompts), world)]
    if done and rank == 0:
        print(f"resuming: {plural(len(done), 'result')} already in {args.output}", file=sys.stderr)
    start = time.perf_counter()
    results, traces = run_prompts(args, models, judge, cfgs, prompts, settings, todo, world)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU memory: {peak:.2f} GiB", file=sys.stderr)
    if args.trace:
        write_page(args.trace, trace_page(args.prompt, settings, results, traces, models[1]))
        print(f"the denoising page: {args.trace}", file=sys.stderr)

    new = torch.tensor([len(results)], device=device)
    if world > 1:
        torch.distributed.all_reduce(new)                # NCCL reduces CUDA tensors, gloo CPU ones
    error = None
    try:
        if rank == 0:                                    # a finished ledger is left as it is
            summarize(args, results, prompts, settings, int(new), time.perf_counter() - start,
                      append=bool(int(new)) or not summarized)
    except WriteError as err:
        error = err
    agree(world, error)
    if world > 1:
        leave(0)


def open_models(args, prompts):
    """Every model folder checked, and every prompt against the models' positions, before any
    weights: what open_dllm and open_reward_model give for the dLLM, the reward model and the
    judge (None without one)."""
    opened = open_dllm(args.dllm)
    rm_opened = open_reward_model(args.reward_model, args.reward)
    judge = args.score_model and open_reward_model(args.score_model, "score", "--score-model")
    check_fits(opened, rm_opened, [r[args.prompt_field] for r in prompts], args.max_new_tokens)
    return opened, rm_opened, judge or None


def identities(opened):
    """Each model's identity for the ledger: its folder's `fingerprint`."""
    names = ("dllm_sha256", "reward_model_sha256", "score_model_sha256")
    return {name: fingerprint(o[0]) if o else None for name, o in zip(names, opened)}


def fingerprint(path):
    """A model folder's identity: SHA-256 (16 hex digits) of its configuration, tokenizer and weight
    index files and of each weight file's name, size, first and last MiB (its header and tensors):
    the same for the hub's snapshot of one revision wherever it lies, another for new weights."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if not os.path.isfile(full) or not name.endswith(
                (".json", ".txt", ".jinja", ".model", ".safetensors", ".bin")):
            continue
        with open(full, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest.update(f"{name}\0{size}\0".encode() + f.read(2**20))     # small files whole
            f.seek(max(2**20, size - 2**20))
            digest.update(f.read())
    return digest.hexdigest()[:16]


def load_models(args, opened, device):
    """The weights, once the device has the memory the run needs: ((dllm, tokenizer, rm, its
    tokenizer, the vocabulary map, E^R), judge or None)."""
    dllm_opened, rm_opened, judge_opened = opened
    warn_slow_dtype(device, args.dtype)
    if args.steps > args.max_new_tokens:
        print(f"entrgi.py: note: T = {args.steps} steps for L = {args.max_new_tokens} tokens: the "
              "steps that reveal nothing are skipped", file=sys.stderr)
    check_memory(args, opened, device)

    dllm, tok = load_dllm(args.dllm, device, args.dtype, dllm_opened)
    rm, rm_tok = load_reward_model(args.reward_model, device, args.dtype, rm_opened, args.reward)
    judge = None
    if judge_opened:
        judge = load_reward_model(args.score_model, device, args.dtype, judge_opened)
    if args.compile:
        compile_models(dllm, rm)
    vocab = vocab_map(tok, rm_tok, dllm.config.vocab_size)[0].to(device)
    embedding = rm.get_input_embeddings().weight[vocab]                 # E^R in the dLLM's order
    return (dllm, tok, rm, rm_tok, vocab, embedding), judge


# (N, L, V) float32 tensors the first step holds at its peak, at least (traced: 9.8 at the real size)
STEP_TENSORS = 8


def check_memory(args, opened, device):
    """A run that needs more memory than `device` has free, refused before any weight loads: its
    weights in the run's dtype, E^R and the first step's (N, L, V) tensors (STEP_TENSORS of them,
    N = --batch-size x --samples rows), a need known in advance (at least: activations aside)."""
    free = free_memory(device)
    if free is not None and device == "cpu":                 # torchrun's processes on one machine
        free //= int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    size = torch.empty((), dtype=pick_dtype(device, args.dtype)).element_size()
    weights = size * sum(weights_in(o[0]) for o in opened if o)
    config = opened[0][2]
    N = args.batch_size * args.samples
    step = STEP_TENSORS * N * args.max_new_tokens * config.vocab_size * 4
    need = weights + step + size * config.vocab_size * opened[1][1].get("hidden_size", 0)
    if free is not None and need > free:
        gib = lambda n: f"{n / 2**30:.1f} GiB"
        dtype = str(pick_dtype(device, args.dtype))[6:]
        raise InputError(f"the run needs at least {gib(need)} on {device}, which has {gib(free)} "
                         f"free: the weights {gib(weights)} in {dtype}, the first step's tensors "
                         f"{gib(step)} (N = {N} rows x L = {args.max_new_tokens}); lower "
                         "--batch-size, --samples or --max-new-tokens, or use a device with more "
                         "memory")


def weights_in(path):
    """The number of weights in a model folder's .safetensors files, read from their headers."""
    n = 0
    for name in os.listdir(path):
        if name.endswith(".safetensors"):
            with open(os.path.join(path, name), "rb") as f:
                header = safetensors_header(f)
            n += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return n


def free_memory(device):
    """Bytes free on `device`: CUDA's count; on a CPU the system's MemAvailable (Linux); None where
    it cannot be read."""
    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration, ValueError):
        return None


def join_processes(device):
    """Under torchrun, join the process group (one process per GPU; each takes every world-th
    prompt): (world, rank)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 1, 0
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return world, torch.distributed.get_rank()


def cut_unfinished(args, whole, rank, world):
    """The first process drops an unfinished last line of --output (a killed run's) before any
    process appends."""
    if rank == 0 and args.output and regular_file(args.output) and os.path.exists(args.output) \
            and os.path.getsize(args.output) > whole:
        os.truncate(args.output, whole)
    if world > 1:
        torch.distributed.barrier()                      # no process appends before the cut


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


def cpu_threads(device):
    """On a CPU where OMP_NUM_THREADS is unset: torch's threads, one per core that other work leaves
    free (with a thread per core a loaded 2-core machine ran 3-10x slower), said in one line."""
    if torch.device(device).type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    cores = os.cpu_count() or 1
    busy = other_work()
    torch.set_num_threads(max(1, min(cores, cores - round(busy))))
    print(f"entrgi.py: note: {plural(torch.get_num_threads(), 'CPU thread')} ({cores} cores, "
          f"{busy:g} busy with other work; OMP_NUM_THREADS=N sets another number)", file=sys.stderr)


def other_work():
    """How many cores other work keeps busy now: the processes running beside this one (Linux's
    /proc/loadavg; the 1-minute average lags a minute behind), else the 1-minute load average."""
    try:
        with open("/proc/loadavg") as f:
            return max(0, int(f.read().split()[3].split("/")[0]) - 1)
    except (OSError, IndexError, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0


def deterministic(device):
    """Process-wide: kernels that give the same result on every run on the same GPU (torch's
    deterministic algorithms; on CUDA, attention's plain math kernel, whose backward adds in a
    fixed order: the switches reach a CPU's attention too, so they are left alone there)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")      # before cuBLAS starts
    torch.use_deterministic_algorithms(True)
    if torch.device(device).type == "cuda":
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)


class Stopped(BaseException):
    """SIGTERM or SIGHUP (a kill, a closed terminal): the run ends as Ctrl-C ends it."""


def stop(signum, frame):
    raise Stopped(signum)


STOPS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def main(argv=None):
    """The command line. Every fault ends in one line, `entrgi.py: error: ...`, and a status: 2 bad
    input, 74 a write the machine refused, 130 Ctrl-C (128 + N for signal N), from the first
    instant to the last."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, *STOPS)}
    signal.signal(signal.SIGINT, signal.default_int_handler)    # Ctrl-C: a KeyboardInterrupt
    for signum in STOPS:
        signal.signal(signum, stop)
    for stream in (sys.stdout, sys.stderr):           # what a terminal or pipe cannot show: escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        parser, args = parse_args(argv)
        status, message = command(args)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    if status:
        parser.exit(status, message + "\n")


def command(args):
    """main's work: (status, the line that ends it, if any)."""
    try:
        cpu_threads(pick_device(args.device))
        if args.deterministic:
            deterministic(pick_device(args.device))
        if args.benchmark:
            run_benchmark(args)
        else:
            run(args)
        return 0, None
    except InputError as err:
        return 2, f"entrgi.py: error: {err}"
    except WriteError as err:
        return 74, f"entrgi.py: error: {err}"
    except FloatingPointError as err:                    # NaN from a model: its dtype overflowed
        return 2, (f"entrgi.py: error: {err}; in --dtype {args.dtype} the models' numbers "
                   "overflowed? pass --dtype float32 (or bfloat16 in place of float16)")
    except KeyboardInterrupt:
        return 130, "\nentrgi.py: interrupted"
    except Stopped as stopped:
        signum = stopped.args[0]
        return 128 + signum, f"\nentrgi.py: stopped by {signal.Signals(signum).name}"
    except (torch.OutOfMemoryError, MemoryError) as err:
        return 2, (f"entrgi.py: error: out of memory ({' '.join(str(err).split())[:160]}): lower "
                   "--batch-size, --samples or --max-new-tokens, or use a device with more memory")
    except RuntimeError as err:
        if "can't allocate memory" not in str(err):      # the CPU allocator's out of memory
            raise
        return 2, ("entrgi.py: error: out of memory: lower --batch-size, --samples or "
                   "--max-new-tokens")


def run_benchmark(args):
    """--benchmark: its settings checked, the step timed, the figures printed (and with --output,
    written as JSON)."""
    cfg = configs(args)[0]
    if args.method == "all" or not 1 <= args.benchmark_steps <= 1000 \
            or not 1 <= (args.benchmark_layers or 1) <= 1000:
        raise InputError("--benchmark times one method (not all), --benchmark-steps and "
                         "--benchmark-layers in [1, 1000]")
    if args.output:
        check_writable(args.output, "--output")
    if args.benchmark_memory:
        result = memory_trace(args.benchmark, cfg.K, cfg.L, cfg.M, 64, cfg.method, reward=args.reward)
        total = result["weights_gib"] + result["embedding_gib"] + result["step_peak_gib"]
        print(f"memory of the first step, {args.benchmark} preset, --reward {args.reward}, {cfg.method}, "
              f"bfloat16, K = {cfg.K}, "
              f"L = {cfg.L} (all masked), M = {cfg.M} (fake tensors: shapes, no data): weights "
              f"{result['weights_gib']:.2f} GiB + E^R {result['embedding_gib']:.2f} GiB + the step's "
              f"peak {result['step_peak_gib']:.2f} GiB = {total:.2f} GiB of tensors")
        if args.output:
            write_page(args.output, json.dumps(result, indent=1) + "\n", "--output")
        return
    if args.reward != "score":
        raise InputError("--benchmark times the classifier reward (--reward score); "
                         "--benchmark-memory traces either")
    device = pick_device(args.device)
    warn_slow_dtype(device, args.dtype)
    check_preset_memory(args.benchmark, device, args.dtype, args.benchmark_layers)
    result = benchmark(args.benchmark, device, args.dtype, cfg.K, cfg.L, cfg.M, 64, args.benchmark_steps,
                       cfg.method, args.benchmark_layers, args.benchmark_first_step, args.compile)
    report(result)
    if args.output:
        write_page(args.output, json.dumps(result, indent=1) + "\n", "--output")



# -----------------------------------------------------------------------------
# 8. Benchmark: the cost of a guided step at the real size, without downloaded weights


# The presets' models: the dLLM's configuration class and fields, and the reward model's (Qwen3,
# one label). The real sizes: Dream 7B and LLaDA 8B, each with Skywork-Reward-V2-Qwen3-1.7B.
SKYWORK = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
               num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
               head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6, num_labels=1,
               pad_token_id=151643, tie_word_embeddings=True)     # Qwen3-1.7B's body
QWEN3_06B = dict(SKYWORK, hidden_size=1024, intermediate_size=3072)
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
    "real-0.6b": ("Qwen2Config", DREAM_7B, QWEN3_06B),
    "llada": ("LlamaConfig", LLADA_8B, SKYWORK),
    "small": ("Qwen2Config", SMALL_DLLM, SMALL_RM),
    "tiny": ("Qwen2Config", TINY_DLLM, TINY_RM),
}


def preset_weights(preset, dtype, layers=None, reward="score"):
    """Bytes of a preset's weights and E^R in `dtype`, counted on the meta device (no memory)."""
    dllm, rm = random_models(preset, "meta", dtype, layers, reward)
    tensors = [*dllm.parameters(), *rm.parameters()]
    E = dllm.config.vocab_size * rm.config.hidden_size
    return sum(t.numel() for t in tensors) * tensors[0].element_size() + E * tensors[0].element_size()


def check_preset_memory(preset, device, dtype, layers):
    """--benchmark refused, before any allocation, on a device whose free memory is less than the
    preset's weights and E^R in the benchmark's dtype."""
    dtype = pick_dtype(device, dtype)
    need = preset_weights(preset, dtype, layers)
    free = free_memory(device)
    if free is not None and need > free:
        raise InputError(f"--benchmark {preset} needs at least {need / 2**30:.1f} GiB on {device} "
                         f"(its weights and E^R in {str(dtype)[6:]}), which has "
                         f"{free / 2**30:.1f} GiB free: on a CPU, --benchmark-layers 2 keeps the "
                         "real vocabularies (minutes: see --help), or --benchmark small; "
                         "--benchmark-memory needs no memory")


def peak_memory(fn, cuda):
    """Runs fn once: its peak memory beyond what it found, GiB (on CPUs the resident set,
    Linux only; else None)."""
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 2**20 for line in f if line.startswith(key))

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


class LiveBytes(TorchDispatchMode):
    """The bytes of the tensors that operators create while it is on, counted while they live (by
    storage: a view is no new memory), and their peak. Tensors that exist before (`known`, such as
    the weights) are not counted, nor are their views."""

    def __init__(self, known=()):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.alive = {}                              # id(storage) -> a weak reference to it
        for t in known:
            storage = t.untyped_storage()
            self.alive[id(storage)] = weakref.ref(storage)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.count(t.untyped_storage())
        return out

    def count(self, storage):
        key = id(storage)
        if key in self.alive and self.alive[key]() is storage:
            return
        n = storage.nbytes()
        self.live += n
        self.peak = max(self.peak, self.live)
        self.alive[key] = weakref.ref(storage, lambda _, key=key, n=n: self.free(key, n))

    def free(self, key, n):
        self.live -= n
        self.alive.pop(key, None)


def memory_trace(preset="real", K=4, L=128, M=3, P=64, method="entrgi", dtype=torch.bfloat16,
                 fake=True, reward="score"):
    """The first step's memory (every position masked) at a preset's full size, without the memory:
    the step runs on fake tensors (shapes and dtypes, no data: FakeTensorMode) and each tensor it
    creates is counted while it lives. GiB: the weights, E^R, the step's peak beyond them. fake=False
    runs it on real CPU tensors (the tests compare the two). reward: score or loglik."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext():
        dllm, rm = random_models(preset, "cpu", dtype, reward=reward)
        V = dllm.config.vocab_size
        vocab = torch.arange(V) % rm.config.vocab_size
        embedding = rm.get_input_embeddings().weight[vocab]
        denoiser = make_denoiser(dllm, [list(range(P))], K, L)
        slots = ([list(range(P + 12))], [list(range(5))])
        reward_fn = make_reward(rm, *slots, K, [V - 2]) if reward == "score" else \
            make_loglik_reward(rm, *slots, K, [V - 2], vocab)
        weights = [t for model in (dllm, rm) for t in (*model.parameters(), *model.buffers())]
        live = LiveBytes([*weights, embedding])
        with live, contextlib.suppress(DataDependentOutputException):   # (fake tensors hold no
            cfg = Config(method, K, T=1, L=L, M=M)                     # value for the check after
            sample(denoiser, reward_fn, embedding, [0], V - 1, [V - 2], cfg)   # the loop to read)
    gib = lambda tensors: sum(t.numel() * t.element_size() for t in tensors) / 2**30
    return {"preset": preset, "reward": reward, "method": method, "K": K, "L": L, "M": M, "P": P,
            "dtype": str(dtype)[6:], "weights_gib": gib(weights), "embedding_gib": gib([embedding]),
            "step_peak_gib": live.peak / 2**30}


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
    if compile:
        compile_models(dllm, rm)
    denoiser, reward, embedding, y0 = step_inputs(dllm, rm, K, L, m, P, g)
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
    parts_run = (("step", step), ("dllm", lambda: denoiser(y0)), ("rm", rm_pass))
    counts = {name: count_ops(fn, V) for name, fn in parts_run}
    rates = hardware(device, dtype, timed)
    physical = (counts["step"]["flops"] / rates["matmul_flop_s"]
                + counts["step"]["vocab_bytes"] / rates["copy_byte_s"])
    draw = timed(lambda: top_p_sample(q, cfg.top_p, torch.Generator(device)))
    softmax = timed(lambda: q.softmax(-1))
    tensors = [t for model in (dllm, rm) for t in model.parameters()]
    weights = sum(t.numel() * t.element_size() for t in tensors) / 2**30
    outside = counts["step"]["ops"] - counts["dllm"]["ops"] - M * counts["rm"]["ops"]
    return {"preset": name, "layers": layers, "device": device,
            "dtype": str(dtype)[6:], "K": K, "L": L, "masked": m, "M": M, "P": P, "method": method, "steps": steps,
            "compile": compile, "first_step_s": first_s, "parts_s": parts, "floor_s": sum(parts.values()),
            "total_s": total, "ratio": total / sum(parts.values()), "physical_floor_s": physical,
            "physical_ratio": total / physical, **rates, "step_flops": counts["step"]["flops"],
            "step_vocab_bytes": counts["step"]["vocab_bytes"], "host_waits_one_step_run": counts["step"]["waits"],
            "ops_per_step": counts["step"]["ops"], "ops_outside_models": outside, "top_p_draw_s": draw,
            "softmax_s": softmax, "peak_beyond_weights_gib": peak, "weights_gib": weights}


def step_inputs(dllm, rm, K, L, m, P, g):
    """The benchmark's step: a random prompt of P tokens and K rows of L tokens, m of them masked
    (mask id V - 1, end id V - 2), the denoiser and the reward over them, and E^R."""
    V = dllm.config.vocab_size
    V_rm = rm.config.vocab_size
    device = dllm.device
    ids = [torch.randint(0, min(V, V_rm) - 2, (n,), generator=g).tolist() for n in (P, P + 12, 5)]
    prompt, prefix, suffix = ids
    # (V, d) E^R
    embedding = rm.get_input_embeddings().weight[torch.arange(V, device=device) % V_rm]
    y0 = torch.randint(0, V - 2, (K, L), generator=g)
    y0 = y0.scatter(1, torch.rand(K, L, generator=g).argsort(1)[:, :m], V - 1).to(device)
    denoiser = make_denoiser(dllm, [prompt], K, L)
    reward = make_reward(rm, [prefix], [suffix], K, [V - 2])
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


def random_models(preset, device, dtype, layers=None, reward="score"):
    """A preset's dLLM and reward model (a one-label classifier, or with reward="loglik" a causal
    LM) with random weights (`layers` layers each where asked), frozen."""
    import transformers as tf
    kind, dllm_fields, rm_fields = PRESETS[preset] if isinstance(preset, str) else preset
    depth = {"num_hidden_layers": layers} if layers else {}
    torch.manual_seed(0)
    with torch.device(device):
        dllm_config = getattr(tf, kind)(**{**dllm_fields, **depth})
        dllm = tf.AutoModelForCausalLM.from_config(dllm_config, **dtype_kwarg(dtype))
        rm_config = tf.Qwen3Config(**{**rm_fields, **depth})
        auto = tf.AutoModelForSequenceClassification if reward == "score" else tf.AutoModelForCausalLM
        rm = auto.from_config(rm_config, **dtype_kwarg(dtype))
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
    size = 2**28 if torch.device(device).type == "cuda" else 2**25
    src = torch.empty(size, dtype=torch.uint8, device=device)
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
            ("physical floor", r["physical_floor_s"]),
            ("first step (warm-up" + (", compiling)" if r["compile"] else ")"), r["first_step_s"])]

    for name, seconds in rows:
        print(f"  {name:<40} {seconds * 1e3:10.1f} ms")

    print(f"  {'guided step / eager floor':<40} {r['ratio']:10.2f}")
    print(f"  {'guided step / physical floor':<40} {r['physical_ratio']:10.2f}   ({r['step_flops'] / 1e12:.3f} TFLOP "
          f"at {r['matmul_flop_s'] / 1e12:.2f} TFLOP/s; {r['step_vocab_bytes'] / 2**30:.2f} GiB of vocabulary "
          f"tensors at {r['copy_byte_s'] / 2**30:.1f} GiB/s)")
    print(f"  {'host waits in a one-step run':<40} {r['host_waits_one_step_run']:10d}   (1: the check "
          "after the loop that every step's logits were numbers)")
    calls = f"{r['ops_per_step']:10d} {r['ops_outside_models']:6d}"
    print(f"  {'operator calls: step, outside the models':<40} {calls}")
    draw = r["top_p_draw_s"]
    softmax = r["softmax_s"]
    peak = r["peak_beyond_weights_gib"]
    print(f"  {'top-p draw / softmax (K m x |V|)':<40} {draw / softmax:10.2f}   "
          f"({draw * 1e3:.1f} / {softmax * 1e3:.1f} ms)")
    peak = "       n/a" if peak is None else f"{peak:10.2f} GiB"
    print(f"  {'peak memory beyond the weights':<40} {peak}   (weights {r['weights_gib']:.2f} GiB)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:                            # Ctrl-C as main() ended: the same line
        interrupted(signal.SIGINT, None)
