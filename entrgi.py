"""
EntRGi: Entropy-aware Reward Guidance for discrete diffusion language models.

Steers a masked diffusion LM (Dream-v0-Instruct-7B) with a reward model at test time:
at every denoising step, Adam moves the denoiser's logits at the still-masked
positions up the reward model's gradient, and the step samples from the moved logits.

References:
1) the paper: A. Tejaswi, L. Rout, C. Caramanis, S. Shakkottai, S. Sanghavi,
   "EntRGi: Entropy Aware Reward Guidance for Diffusion Language Models",
   arXiv:2602.05000, 2026. Section numbers below (SPEC §N) follow shared/SPEC.md.
2) the straight-through baseline, APS: Rout et al., 2025.
3) Dream 7B (Dream-org/Dream-v0-Instruct-7B): the denoiser, run here through
   transformers' own Qwen2 classes with a bidirectional attention mask.
4) Skywork-Reward-V2 (Skywork/Skywork-Reward-V2-Qwen3-1.7B): the default reward model.

Top to bottom: the relaxation (Eq. soft / hard / EntRGi), the reward bridge, the guided
step (Algorithm 1, lines 2-3), the sampler (Algorithm 1), loading, the command line.
"""

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import torch

METHODS = ("bon", "soft", "aps", "entrgi")


class InputError(ValueError):
    """Bad input from the user: the command line prints the message and exits with status 2."""


@dataclass
class Config:
    method: str = "entrgi"     # entrgi | aps (straight-through) | soft (expectation) | bon (unguided, best of K)
    K: int = 4                 # trajectories per prompt
    T: int = 128               # denoising steps
    L: int = 128               # new tokens
    M: int = 3                 # Adam steps on psi per denoising step
    lr: float = 0.5            # eta, Adam's learning rate (project README; the scripts default to 1.0)
    temperature: float = 0.7   # tau
    top_p: float = 0.95
    seed: int = 0

    def check(self):
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)} or all")
        for name in ("K", "T", "L"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.M < 0 or self.lr < 0:
            raise InputError(f"guidance steps M and learning rate eta must not be negative, got M={self.M}, eta={self.lr}")
        if not self.temperature > 0:
            raise InputError(f"temperature tau must be above 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top-p must lie in (0, 1], got {self.top_p}")
        return self

    @property
    def guided(self):
        return self.method != "bon" and self.M > 0 and self.lr > 0

# -----------------------------------------------------------------------------
# 1. The relaxation (SPEC §2): how a masked position is fed to the reward model

def uniform(shape, generator, device):
    """U[0, 1) draws. A list of generators draws each equal leading block from its own
    (one generator per prompt), so a prompt's draws do not depend on its batch."""
    if isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=device)
    n = shape[0] // len(generator)
    return torch.cat([torch.rand((n, *shape[1:]), generator=g, device=device) for g in generator])


def top_p_sample(q, top_p, u):
    """x ~ q restricted to the nucleus: the most likely tokens until their mass reaches top_p
    (a token stays while the mass before it is <= top_p, as in Dream).
    q (..., V) probabilities, u (...) uniforms -> ids (...). Inverse-CDF sampling, so each row
    uses exactly its own uniform."""
    p, idx = q.sort(-1, descending=True)                                 # (..., V)
    keep = p.cumsum(-1) - p <= top_p
    p = p * keep
    cdf = p.cumsum(-1)
    j = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1).contiguous(), right=True)
    j = torch.minimum(j, keep.sum(-1, keepdim=True) - 1)                 # float round-off at the top end
    return idx.gather(-1, j).squeeze(-1)


def entropy(q):
    """H(q) over the last axis, with 0 log 0 = 0."""
    return torch.special.entr(q).sum(-1)


def relax(logits, embedding, method, temperature, top_p, generator, x=None):
    """The reward model's input for positions with logits psi (SPEC §2).

    logits (..., V): psi. embedding (V, d): E^R rows in the dLLM's vocabulary order.
    Returns e (..., d) and the entropy weights w (...):
      q      = softmax(psi / tau)
      e_soft = sum_i q_i E_i                           soft relaxation ("expectation")
      e_hard = E[x], x ~ q (top-p)                     the hard token
      w      = H(q) / log|V|                           entropy weight, in [0, 1]
      e      = e_soft + sg(w * (e_hard - e_soft))      EntRGi
    Forward value (1 - w) e_soft + w e_hard; the gradient always takes the soft path.
    soft: w = 0. aps (straight-through): w = 1.
    x (...): a hard sample to hold fixed (for checking gradients); drawn here when None.
    """
    q = torch.softmax(logits / temperature, -1)                          # (..., V)
    e_soft = q.to(embedding.dtype) @ embedding                           # (..., d)
    if method == "soft":
        return e_soft, torch.zeros(q.shape[:-1], device=q.device)
    with torch.no_grad():
        if x is None:
            x = top_p_sample(q.detach(), top_p, uniform(logits.shape[:-1], generator, logits.device))
        if method == "aps":
            w = torch.ones(q.shape[:-1], device=q.device)
        elif method == "entrgi":
            # The paper's w. The released scripts take this entropy from softmax(psi),
            # at temperature 1, while e_soft uses psi / tau.
            w = entropy(q.detach()) / math.log(q.shape[-1])
        else:
            raise InputError(f"unknown relaxation {method!r}: choose entrgi, aps or soft")
    e_hard = embedding[x]                                                # (..., d)
    return e_soft + (w.unsqueeze(-1).to(e_soft.dtype) * (e_hard - e_soft)).detach(), w

# -----------------------------------------------------------------------------
# 2. The reward bridge (SPEC §4): dLLM tokens -> reward-model embeddings -> R

def vocab_map(dllm_tokenizer, rm_tokenizer, vocab_size, verbose=True):
    """For each dLLM token id, the RM token id with the identical token string; unmatched ids
    (and the dLLM's padded rows past its tokenizer) go to the RM's unk, else eos, token.
    Returns (map (vocab_size,) long, overlap = fraction of the dLLM tokenizer's ids matched)."""
    rm_vocab = rm_tokenizer.get_vocab()
    tokens = dllm_tokenizer.convert_ids_to_tokens(list(range(len(dllm_tokenizer))))
    ids = torch.full((vocab_size,), -1, dtype=torch.long)
    ids[: len(tokens)] = torch.tensor([rm_vocab.get(t, -1) for t in tokens])
    overlap = (ids[: len(tokens)] >= 0).float().mean().item()
    fallback = next((i for i in (rm_tokenizer.unk_token_id, rm_tokenizer.eos_token_id, rm_tokenizer.pad_token_id) if i is not None), 0)
    if verbose:
        print(f"vocabulary map: {overlap:.2%} of the dLLM's {len(tokens)} tokens found in the reward model's vocabulary",
              file=sys.stderr)
    if overlap < 0.9:
        warnings.warn(f"only {overlap:.1%} of the dLLM's tokens exist in the reward model's vocabulary: "
                      "the reward model will see many unknown tokens", stacklevel=2)
    return ids.masked_fill(ids < 0, fallback), overlap


def rm_chat(rm_tokenizer, prompt, response):
    """The reward model's chat text for one (prompt, response) pair."""
    conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return rm_tokenizer.apply_chat_template(conversation, tokenize=False)


SLOT = "ENTRGIRESPONSESLOT"


def rm_slots(rm_tokenizer, prompts):
    """RM token ids before and after the response slot of the chat template, for each prompt:
    (prefixes, suffixes), two lists of id lists."""
    prefixes, suffixes = [], []
    for prompt in prompts:
        parts = rm_chat(rm_tokenizer, prompt, SLOT).split(SLOT)
        if len(parts) != 2:
            raise InputError("the reward model's chat template does not place the assistant's reply verbatim "
                             "once in its text: use a reward model whose template does")
        prefix, suffix = (rm_tokenizer(s, add_special_tokens=False)["input_ids"] for s in parts)
        if not suffix:
            raise InputError("the reward model's chat template writes nothing after the reply: "
                             "its score position would fall inside the response")
        prefixes.append(prefix)
        suffixes.append(suffix)
    return prefixes, suffixes


def left_pad(rows, pad_id, device):
    """List of id lists -> (B, T) ids, left-padded, and (B, T) bool: True at real tokens."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    valid = torch.zeros((len(rows), T), dtype=torch.bool)
    for b, r in enumerate(rows):
        if r:
            ids[b, T - len(r):] = torch.tensor(r)
            valid[b, T - len(r):] = True
    return ids.to(device), valid.to(device)


def attention_bias(valid, causal, dtype, past=None):
    """(B, T) bool -> (B, 1, T, T) additive attention mask: 0 where query i may attend key j,
    the dtype's minimum elsewhere. Padding keys are hidden; every query also sees itself, so a
    padding row is never fully masked (no NaN there to leak into the batch). past (B, P) bool:
    cached keys in front (real or padding), seen by every query: the mask is then (B, 1, T, P + T)."""
    T = valid.shape[1]
    allowed = valid[:, None, None, :]                                    # (B, 1, 1, T) keys
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=valid.device)
    if past is not None:
        allowed = torch.cat([past[:, None, None, :].expand(-1, 1, T, -1), allowed], -1)
    return torch.zeros(allowed.shape, dtype=dtype, device=valid.device).masked_fill(~allowed, torch.finfo(dtype).min)


def rm_score(rm, x, valid, past_valid=None, past_kv=None):
    """R for reward-model input embeddings x (N, T, d) with valid (N, T) marking real positions:
    padding may sit anywhere but at the last position, where transformers pools an inputs_embeds
    batch. Position ids count real tokens only, so padding changes no score. past_valid (N, P)
    and past_kv (per layer: keys, values): a cached prefix in front of x."""
    from transformers import DynamicCache
    start = 0 if past_valid is None else past_valid.sum(1, keepdim=True)
    position_ids = start + (valid.cumsum(1) - 1).clamp(min=0)
    bias = attention_bias(valid, causal=True, dtype=x.dtype, past=past_valid)
    cache = None if past_kv is None else DynamicCache(past_kv)
    return rm(inputs_embeds=x, attention_mask=bias, position_ids=position_ids, cache=cache,
              use_cache=cache is not None).logits[:, 0].float()           # (N,)


def make_reward(rm, prefixes, suffixes, K):
    """reward(e (N, L, d), valid (N, L)) -> R (N,) for N = len(prefixes) * K rows, prompt-major:
    [RM chat prefix of the prompt] + [response slot] + [template suffix]; prefixes and suffixes
    are RM token id lists, one per prompt. The reward model is causal, so the prefix's keys and
    values never depend on the response: they are computed once, here, and reused by every call."""
    from transformers import DynamicCache
    E = rm.get_input_embeddings().weight
    (pre, pre_valid), (suf, suf_valid) = (left_pad(rows, 0, E.device) for rows in (prefixes, suffixes))
    with torch.no_grad():
        cache = DynamicCache(config=rm.config)
        rm(inputs_embeds=E[pre], attention_mask=attention_bias(pre_valid, causal=True, dtype=E.dtype),
           position_ids=(pre_valid.cumsum(1) - 1).clamp(min=0), cache=cache, use_cache=True)
        prefix_kv = [(k.repeat_interleave(K, 0), v.repeat_interleave(K, 0)) for k, v, *_ in cache]
    pre_valid, suf, suf_valid = (t.repeat_interleave(K, 0) for t in (pre_valid, suf, suf_valid))
    e_suf = E[suf]                                                       # (N, S, d), its last token real

    def reward(e, valid):
        x = torch.cat([e.to(E.dtype), e_suf], 1)                         # (N, L + S, d) after the cached prefix
        return rm_score(rm, x, torch.cat([valid, suf_valid], 1), pre_valid, prefix_kv)
    return reward


@torch.no_grad()
def score_texts(rm, rm_tokenizer, prompts, responses):
    """R(prompt, response) on text, re-tokenized by the reward model's own tokenizer."""
    rows = [rm_tokenizer(rm_chat(rm_tokenizer, p, r), add_special_tokens=False)["input_ids"]
            for p, r in zip(prompts, responses)]
    E = rm.get_input_embeddings().weight
    ids, valid = left_pad(rows, 0, E.device)                            # any pad id: padding is masked out
    return rm_score(rm, E[ids], valid)                                   # left-padded: the last position is real

# -----------------------------------------------------------------------------
# 3. The guided step (SPEC §3; Algorithm 1, lines 2-3)

def first_eos_mask(tokens, eos_ids):
    """(N, L) -> (N, L) bool: True before the first end token (the response the RM reads). The end
    token is left out as well: the RM's template suffix closes the turn, as when scoring text."""
    return torch.isin(tokens, eos_ids).cumsum(-1) == 0


def guide(logits, y, idx, reward, embedding, eos_ids, cfg, generator, betas=(0.9, 0.999), eps=1e-8):
    """M Adam steps on psi, the logits at the masked positions, ascending the reward.
    logits (N, m, V) fp32 at the m masked positions idx (N, m) of y (N, L), the current tokens.
    Returns the moved psi (N, m, V) and the number of trajectory updates skipped because the
    reward or its gradient was not finite (a tensor: no host synchronisation here)."""
    psi = logits.detach().clone()                                        # line 2: a copy, the dLLM stays frozen
    m, v = torch.zeros_like(psi), torch.zeros_like(psi)                  # Adam moments, fresh at every step
    n = torch.zeros(psi.shape[0], 1, 1, dtype=psi.dtype, device=psi.device)   # Adam steps taken, per trajectory
    skipped = torch.zeros((), dtype=torch.long, device=psi.device)
    e_known = embedding[y.scatter(1, idx, 0)]                            # (N, L, d) E^R[token] where revealed
    at_idx = idx.unsqueeze(-1).expand(-1, -1, e_known.shape[-1])         # (N, m, d)
    for _ in range(cfg.M):                                               # line 3
        psi.requires_grad_(True)
        e, _ = relax(psi, embedding, cfg.method, cfg.temperature, cfg.top_p, generator)    # (N, m, d)
        e = e_known.scatter(1, at_idx, e)                                # the response slot (N, L, d)
        tokens = y.scatter(1, idx, psi.detach().argmax(-1))              # EOS judged by argmax psi where masked
        R = reward(e, first_eos_mask(tokens, eos_ids))                   # (N,)
        g, = torch.autograd.grad(-R.sum(), psi)                          # loss = -sum_n R_n
        psi = psi.detach()
        with torch.no_grad():
            ok = (R.isfinite() & g.isfinite().flatten(1).all(1)).view(-1, 1, 1)   # skip a non-finite update
            skipped += (~ok).sum()
            g = torch.where(ok, g, 0.0)
            n = n + ok
            m = torch.where(ok, betas[0] * m + (1 - betas[0]) * g, m)
            v = torch.where(ok, betas[1] * v + (1 - betas[1]) * g * g, v)
            # torch.optim.Adam's update, written out so that a skipped row keeps its state
            denom = v.sqrt() / (1 - betas[1] ** n).clamp(min=1e-38).sqrt() + eps
            step = cfg.lr / (1 - betas[0] ** n).clamp(min=1e-38) * m / denom
            psi = torch.where(ok, psi - step, psi)
    return psi, skipped

# -----------------------------------------------------------------------------
# 4. The sampler (Algorithm 1)

def schedule(T, L):
    """Tokens revealed at each of the T steps: floor(n_masked (1 - t_{k+1} / t_k)), all that
    remain at the last step, with t = linspace(1, 1e-3, T + 1) (Dream's schedule)."""
    t = torch.linspace(1, 1e-3, T + 1)
    counts, n = [], L
    for k in range(T):
        c = n if k == T - 1 else int(n * (1 - t[k + 1] / t[k]))
        counts.append(c)
        n -= c
    return counts


def sample(denoiser, reward, embedding, seeds, L, mask_id, eos_ids, cfg, progress=False, y0=None):
    """Reward-guided masked diffusion (Algorithm 1) for len(seeds) prompts x K trajectories.

    denoiser(y (N, L)) -> (N, L, V) logits, row l predicting token l of the response.
    reward(e (N, L, d), valid (N, L)) -> (N,) reward on response-slot embeddings.
    embedding (V, d): the RM's embeddings in the dLLM's vocabulary order.
    seeds: one per prompt, rows prompt-major. cfg.method "bon" (or M = 0, or lr = 0) samples
    unguided. y0 (N, L): tokens to start from, mask_id where to generate, as many in every row
    (infilling); all masked by default.
    Returns y (N, L) tokens and the number of skipped (non-finite) guidance updates.
    """
    device = embedding.device
    N = len(seeds) * cfg.K
    # one generator per prompt; separate streams, so guidance never shifts the sampler's draws
    gen_x = [torch.Generator(device).manual_seed(s) for s in seeds]
    gen_guide = [torch.Generator(device).manual_seed(s + 7919) for s in seeds]
    eos_ids = torch.as_tensor(eos_ids, dtype=torch.long, device=device)
    y = torch.full((N, L), mask_id, dtype=torch.long, device=device) if y0 is None else y0.clone()
    masked_per_row = set((y == mask_id).sum(1).tolist())
    if len(masked_per_row) != 1:
        raise InputError("every row of y0 needs the same number of masked positions")
    skipped = torch.zeros((), dtype=torch.long, device=device)
    counts = schedule(cfg.T, masked_per_row.pop())       # tokens revealed at each step
    steps = range(cfg.T)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc=f"{cfg.method} denoising", file=sys.stderr)
    for k in steps:
        if counts[k] == 0:                               # nothing is revealed at this step: it changes nothing
            continue
        n_masked = sum(counts[k:])                       # the same in every row
        idx = (y == mask_id).int().sort(dim=1, descending=True, stable=True).indices[:, :n_masked]   # (N, m) masked positions
        logits = denoiser(y)                                                 # line 1: (N, L, V)
        logits = logits.gather(1, idx.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))   # (N, m, V) the masked rows
        psi = logits
        if cfg.guided:                                                       # lines 2-3
            psi, s = guide(logits, y, idx, reward, embedding, eos_ids, cfg, gen_guide)
            skipped += s
        q = torch.softmax(logits / cfg.temperature, -1)                      # the unguided step distribution
        q_psi = torch.softmax(psi / cfg.temperature, -1) if cfg.guided else q
        x0 = top_p_sample(q_psi, cfg.top_p, uniform(idx.shape, gen_x, device))   # line 4: (N, m)
        # line 5: confidence = -H(q), EOS last
        # (Dream's generate takes this entropy after its top-p filter; the SPEC's is unfiltered)
        confidence = -entropy(q)
        confidence = torch.where(torch.isin(x0, eos_ids), confidence - 1e4, confidence)
        reveal = confidence.topk(counts[k], -1).indices                      # (N, counts[k]) of the m
        y = y.scatter(1, idx.gather(1, reveal), x0.gather(1, reveal))        # line 6
    return y, skipped

# -----------------------------------------------------------------------------
# 5. Loading: Dream through transformers' Qwen2 classes, any sequence-classification RM

def resolve(name_or_path):
    """A local directory as is; a hub name downloaded (or found in the cache)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
    except Exception as err:
        raise InputError(f"cannot find model {name_or_path!r}: it is no local directory and the hub did not give it "
                         f"({type(err).__name__}); check the name, or the machine may be offline: pass a local directory") from None


def pick_dtype(device, dtype):
    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def bidirectional(model):
    """Dream attends both ways: the masks we pass say so, and no kernel may assume causal."""
    for layer in model.model.layers:
        layer.self_attn.is_causal = False
    return model


def load_dllm(name_or_path, device="cpu", dtype="auto"):
    """Dream (hub name or a directory laid out like Dream-v0-Instruct-7B) as transformers'
    Qwen2ForCausalLM with bidirectional attention; no trust_remote_code (SPEC §5).
    Returns (model, tokenizer), the model frozen in eval mode."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer
    path = resolve(name_or_path)
    try:
        with open(os.path.join(path, "config.json")) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{name_or_path!r} has no readable config.json ({err})") from None
    # Dream's config is Qwen2's with model_type "Dream" and a mask token id
    drop = {"model_type", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype"}
    config = Qwen2Config(**{k: v for k, v in raw.items() if k not in drop})
    try:
        model = Qwen2ForCausalLM.from_pretrained(path, config=config, dtype=pick_dtype(device, dtype))
        tokenizer = Qwen2Tokenizer.from_pretrained(path)   # Dream's "DreamTokenizer" is Qwen2's byte-level BPE
    except OSError as err:
        raise InputError(f"cannot load the dLLM from {name_or_path!r}: {err}") from None
    if tokenizer.mask_token_id is None:
        raise InputError(f"the tokenizer of {name_or_path!r} has no mask token: a masked diffusion LM needs one")
    return bidirectional(model.to(device)).eval().requires_grad_(False), tokenizer


def load_reward_model(name_or_path, device="cpu", dtype="auto"):
    """Any sequence-classification reward model with one label and a chat template.
    Returns (model, tokenizer), the model frozen in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    path = resolve(name_or_path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=pick_dtype(device, dtype))
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot load the reward model from {name_or_path!r}: {err}") from None
    if not tokenizer.chat_template:
        raise InputError(f"the reward model {name_or_path!r} has no chat template: it cannot place a response")
    if model.config.num_labels != 1:
        raise InputError(f"the reward model {name_or_path!r} has {model.config.num_labels} output labels: "
                         "a reward model gives one score")
    # rm_score keeps a real token at the last position, so transformers' warning that it cannot find
    # padding in inputs_embeds (it pools at the last position) does not apply
    logging.getLogger("transformers.modeling_layers").addFilter(lambda record: "inputs_embeds" not in record.getMessage())
    return model.to(device).eval().requires_grad_(False), tokenizer


def dllm_logits(model, ids, valid, last=None):
    """Dream's logits aligned so that row i predicts token i: Dream predicts token i from its
    output at position i - 1 (position 0 keeps its own). ids, valid (B, T) -> (B, T, V), or
    only the last `last` rows (B, last, V), the lm_head run on those alone."""
    position_ids = (valid.cumsum(1) - 1).clamp(min=0)
    bias = attention_bias(valid, causal=False, dtype=model.dtype)
    keep = ids.shape[1] if last is None else last + 1
    out = model(input_ids=ids, attention_mask=bias, position_ids=position_ids, logits_to_keep=keep).logits
    return torch.cat([out[:, :1], out[:, :-1]], 1) if last is None else out[:, :-1]


def dllm_prompt_ids(tokenizer, prompt):
    """The dLLM's chat-formatted prompt, ready for the assistant's reply."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_fits(model, prompts, L):
    """Every prompt (dLLM token id lists) plus L new tokens fits the dLLM's positions."""
    limit, longest = model.config.max_position_embeddings, max(map(len, prompts))
    if longest + L > limit:
        raise InputError(f"prompt ({longest} tokens) + L ({L}) exceeds the dLLM's {limit} positions: "
                         "shorten the prompt or lower --max-new-tokens")


def make_denoiser(model, prompts, K, L, mask_id):
    """denoiser(y (N, L)) -> (N, L, V) fp32 logits of the response positions, N = len(prompts) * K;
    prompts are dLLM token id lists, left-padded in front. The mask token itself is never proposed."""
    check_fits(model, prompts, L)
    prompt, prompt_valid = left_pad(prompts, 0, model.device)        # any pad id: padding is masked out
    prompt, prompt_valid = prompt.repeat_interleave(K, 0), prompt_valid.repeat_interleave(K, 0)

    def denoiser(y):
        ids = torch.cat([prompt, y], 1)
        valid = torch.cat([prompt_valid, torch.ones_like(y, dtype=torch.bool)], 1)
        logits = dllm_logits(model, ids, valid, last=y.shape[1]).float()
        logits[..., mask_id] = -math.inf
        return logits
    return denoiser


def end_ids(tokenizer):
    """Token ids that end a response: eos, pad, and the chat turn's end <|im_end|> where present."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.get_vocab().get("<|im_end|>")}
    return sorted(i for i in ids if i is not None)


def decode(tokenizer, y, eos_ids):
    """(N, L) tokens -> N response strings, each cut at its first end token."""
    keep = first_eos_mask(y, torch.as_tensor(eos_ids, device=y.device))
    return [tokenizer.decode(row[k].tolist(), skip_special_tokens=True) for row, k in zip(y, keep)]

# -----------------------------------------------------------------------------
# 6. The command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="entrgi.py", description="EntRGi: steer a diffusion LM with a reward model.")
    p.add_argument("--prompt", help="the user prompt")
    p.add_argument("--prompts-file", help="many prompts: a text file, one prompt a line (blank lines skipped), or "
                   ".jsonl with a \"prompt\" field (other fields are carried into the output); needs --output")
    p.add_argument("--batch-size", type=int, default=1, help="B, prompts per forward pass (B x K rows)")
    p.add_argument("--dllm", default="Dream-org/Dream-v0-Instruct-7B", help="diffusion LM: hub name or local directory")
    p.add_argument("--reward-model", default="Skywork/Skywork-Reward-V2-Qwen3-1.7B", help="reward model R: hub name or local directory")
    p.add_argument("--method", default="entrgi", help="entrgi | aps (straight-through) | soft (expectation) | "
                   "bon (best of K, unguided) | all (the four on the same prompts and seeds)")
    p.add_argument("--samples", type=int, default=4, help="K, trajectories per prompt")
    p.add_argument("--steps", type=int, default=128, help="T, denoising steps")
    p.add_argument("--max-new-tokens", type=int, default=128, help="L, response length in tokens")
    p.add_argument("--guidance-steps", type=int, default=3, help="M, Adam steps on psi per denoising step")
    p.add_argument("--lr", type=float, default=0.5, help="eta, Adam's learning rate on psi")
    p.add_argument("--temperature", type=float, default=0.7, help="tau, sampling temperature")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus mass for sampling")
    p.add_argument("--seed", type=int, default=0, help="random seed; the prompt at position i of a file gets seed + i")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="model weights' dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--output", default=None, help="with --prompt: the run as JSON; with --prompts-file: JSON lines, "
                   "one a prompt, appended as each finishes; the same command again resumes")
    p.add_argument("--benchmark", choices=list(PRESETS), help="time guided steps of randomly initialised models of a "
                   "preset's configurations (real: Dream-7B + Skywork-Reward-V2-Qwen3-1.7B; small: for CPUs), "
                   "at --samples, --max-new-tokens, --guidance-steps, --method; no weights needed")
    p.add_argument("--benchmark-steps", type=int, default=3, help="denoising steps to time with --benchmark")
    return p, p.parse_args(argv)


def configs(args):
    """One checked Config per method asked for."""
    methods = METHODS if args.method == "all" else [args.method]
    return [Config(m, args.samples, args.steps, args.max_new_tokens, args.guidance_steps, args.lr,
                   args.temperature, args.top_p, args.seed).check() for m in methods]


def settings(args):
    """What a result depends on besides its method and prompt."""
    return {"K": args.samples, "T": args.steps, "L": args.max_new_tokens, "M": args.guidance_steps, "lr": args.lr,
            "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
            "dllm": args.dllm, "reward_model": args.reward_model}


def pick_device(device):
    local = os.environ.get("LOCAL_RANK")                 # torchrun: one GPU a process
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and local is not None:
        device = f"cuda:{local}"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but CUDA is not available here: use --device cpu")
    return device


def load(args, device):
    """Both models, frozen, and E^R rows in the dLLM's vocabulary order: (dllm, tok, rm, rm_tok, embedding)."""
    dllm, tok = load_dllm(args.dllm, device, args.dtype)
    rm, rm_tok = load_reward_model(args.reward_model, device, args.dtype)
    ids, _ = vocab_map(tok, rm_tok, dllm.config.vocab_size)
    return dllm, tok, rm, rm_tok, rm.get_input_embeddings().weight[ids.to(device)]   # (V, d)


def generate(models, prompts, seeds, cfg, progress=False):
    """K responses for each prompt, each scored on text: one result dict per prompt."""
    dllm, tok, rm, rm_tok, embedding = models
    eos = end_ids(tok)
    denoiser = make_denoiser(dllm, [dllm_prompt_ids(tok, p) for p in prompts], cfg.K, cfg.L, tok.mask_token_id)
    reward = make_reward(rm, *rm_slots(rm_tok, prompts), cfg.K)
    y, skipped = sample(denoiser, reward, embedding, seeds, cfg.L, tok.mask_token_id, eos, cfg, progress)
    if skipped.item():
        warnings.warn(f"{skipped.item()} guidance updates skipped: the reward or its gradient was not finite", stacklevel=2)
    texts = decode(tok, y, eos)
    results = []
    for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
        responses = texts[i * cfg.K:(i + 1) * cfg.K]
        R = score_texts(rm, rm_tok, [prompt] * cfg.K, responses).tolist()   # per prompt: no batch-mates' padding
        results.append({"method": cfg.method, "seed": seed, "responses": [{"text": t, "reward": r} for t, r in zip(responses, R)],
                        "best_response": responses[R.index(max(R))], "top1_reward": max(R), "avg_reward": sum(R) / len(R)})
    return results


def method_table(results):
    """Mean Top@1 and mean Avg@N per method (the paper's results table)."""
    table = {}
    for m in METHODS:
        rows = [r for r in results if r["method"] == m]
        if rows:
            table[m] = {"prompts": len(rows), "top1_reward": sum(r["top1_reward"] for r in rows) / len(rows),
                        "avg_reward": sum(r["avg_reward"] for r in rows) / len(rows)}
    return table


def print_table(table, K):
    print(f"{'method':>8} {'prompts':>8} {'Top@1':>8} {'Avg@' + str(K):>8}")
    for m, row in table.items():
        print(f"{m:>8} {row['prompts']:8d} {row['top1_reward']:8.4f} {row['avg_reward']:8.4f}")


def run_prompt(args):
    """--prompt: sample, print every trajectory and the best, optionally write JSON."""
    if not args.prompt.strip():
        raise InputError("the prompt is empty: pass some text with --prompt")
    cfgs = configs(args)
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise InputError(f"cannot write --output {args.output!r}: its folder does not exist")
    device = pick_device(args.device)
    models = load(args, device)
    runs = []
    for cfg in cfgs:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        [result] = generate(models, [args.prompt], [cfg.seed], cfg, progress=True)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        result = {"prompt": args.prompt, "method": cfg.method,
                  "settings": {**settings(args), "device": device, "dtype": str(models[0].dtype).removeprefix("torch.")},
                  **result, "wall_time_s": time.perf_counter() - start, "peak_gpu_memory_gib": peak}
        for i, r in enumerate(result["responses"]):
            print(f"--- {cfg.method} trajectory {i}: reward {r['reward']:.4f}\n{r['text']}\n")
        print(f"=== {cfg.method} best response (reward {result['top1_reward']:.4f}):\n{result['best_response']}\n")
        print(f"{cfg.method}: Top@1 {result['top1_reward']:.4f}  Avg@{cfg.K} {result['avg_reward']:.4f}  "
              f"wall {result['wall_time_s']:.1f} s" + (f"  peak GPU memory {peak:.2f} GiB" if peak is not None else ""))
        runs.append(result)
    if len(runs) > 1:
        print_table(method_table(runs), args.samples)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(runs[0] if len(runs) == 1 else {"prompt": args.prompt, "runs": runs, "table": method_table(runs)}, f, indent=2)


def read_prompts(path):
    """[{"prompt": ..., other fields}] from a text file (one prompt a line) or a .jsonl file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read --prompts-file {path!r}: {err}") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not path.endswith(".jsonl"):
            records.append({"prompt": line})
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path} line {n} is not JSON: each line of a .jsonl prompts file is one JSON object") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise InputError(f"{path} line {n} has no prompt: each line needs a non-empty \"prompt\" field")
        records.append(record)
    if not records:
        raise InputError(f"--prompts-file {path!r} holds no prompt")
    return records


def read_output(path, prompts, run_settings):
    """The (index, method) pairs an earlier run of this command already wrote to `path`, and the
    byte length of its whole lines. Refuses a file that this command did not write."""
    if not os.path.exists(path):
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise InputError(f"cannot write --output {path!r}: its folder does not exist")
        return set(), 0
    try:
        with open(path, "rb") as f:
            data = f.read()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read --output {path!r} to resume from it: {err}") from None
    whole = text[: text.rfind("\n") + 1]                 # a line without its newline was never finished
    done = set()
    for n, line in enumerate(whole.splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and "summary" in record:
            continue
        i = record.get("index") if isinstance(record, dict) else None
        if not (isinstance(i, int) and 0 <= i < len(prompts) and record.get("prompt") == prompts[i]["prompt"]
                and record.get("method") in METHODS and record.get("settings") == run_settings):
            raise InputError(f"--output {path!r} line {n} was not written by this command (another prompts file or other "
                             "settings): refusing to append to it; pass another --output")
        done.add((i, record["method"]))
    return done, len(whole.encode("utf-8"))


def append_line(path, record):
    """One JSON line, in one write to a file opened for appending: a run killed at any moment leaves
    whole lines only, and processes appending to the same file never interleave."""
    data = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def run_file(args):
    """--prompts-file: batches of prompts, resumable JSON-lines output, sharded over torchrun's ranks."""
    cfgs = configs(args)
    if not args.output:
        raise InputError("--prompts-file needs --output FILE.jsonl: the results are written there as they finish")
    if args.batch_size < 1:
        raise InputError(f"the batch size must be at least 1, got {args.batch_size}")
    prompts = read_prompts(args.prompts_file)
    run_settings = settings(args)
    done, whole = read_output(args.output, prompts, run_settings)
    device = pick_device(args.device)
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = 0
    if world > 1:                                        # torchrun: every rank takes every world-th prompt
        import torch.distributed as dist
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        rank = dist.get_rank()
    if rank == 0 and os.path.exists(args.output) and os.path.getsize(args.output) > whole:
        os.truncate(args.output, whole)                  # drop an unfinished last line before appending
        print(f"dropped an unfinished last line from {args.output}", file=sys.stderr)
    if world > 1:
        dist.barrier()
    models = load(args, device)
    dllm, tok = models[:2]
    check_fits(dllm, [dllm_prompt_ids(tok, r["prompt"]) for r in prompts], args.max_new_tokens)   # before any write
    start, new = time.perf_counter(), 0
    mine = list(range(rank, len(prompts), world))
    for b in range(0, len(mine), args.batch_size):
        batch = mine[b:b + args.batch_size]
        for cfg in cfgs:
            todo = [i for i in batch if (i, cfg.method) not in done]
            if not todo:
                continue
            results = generate(models, [prompts[i]["prompt"] for i in todo], [cfg.seed + i for i in todo], cfg)
            for i, result in zip(todo, results):
                line = {"index": i, **prompts[i]}
                line.update(index=i, **result, settings=run_settings)   # ours win over same-named fields of the file
                append_line(args.output, line)
                print(f"prompt {i} {cfg.method}: Top@1 {result['top1_reward']:.4f}  Avg@{cfg.K} {result['avg_reward']:.4f}",
                      file=sys.stderr)
                new += 1
    if world > 1:
        counts = torch.tensor([new], device=device)      # NCCL reduces CUDA tensors, gloo CPU ones
        dist.all_reduce(counts)
        new = int(counts.item())
    if rank == 0:
        summarize(args, len(prompts), new, time.perf_counter() - start)
    if world > 1:
        dist.barrier()                                   # no rank leaves while another still talks to it
        dist.destroy_process_group()


def summarize(args, n_prompts, new, seconds):
    """The table of every result in the output so far: printed, and appended as a summary line."""
    with open(args.output, encoding="utf-8") as f:
        results = [r for r in map(json.loads, f) if "summary" not in r]
    table = method_table(results)
    summary = {"prompts": n_prompts, "results": len(results), "new_results": new,
               "seconds_per_result": seconds / new if new else None, "settings": settings(args), "table": table}
    append_line(args.output, {"summary": summary})
    print(f"{len(results)} results for {n_prompts} prompts in {args.output}; this run: {new} new"
          + (f", {seconds / new:.2f} s each" if new else ""))
    print_table(table, args.samples)


def main(argv=None):
    parser, args = parse_args(argv)
    try:
        if args.benchmark:
            if args.method == "all" or args.benchmark_steps < 1:
                raise InputError("--benchmark times one method (not all) over at least one step")
            cfg = configs(args)[0]
            return benchmark(args.benchmark, pick_device(args.device), args.dtype, cfg.K, cfg.L, cfg.M,
                             steps=args.benchmark_steps, method=cfg.method)
        if (args.prompt is None) == (args.prompts_file is None):
            raise InputError("pass one of --prompt TEXT or --prompts-file FILE")
        run_prompt(args) if args.prompt is not None else run_file(args)
    except InputError as err:
        parser.exit(2, f"entrgi.py: error: {err}\n")


# -----------------------------------------------------------------------------
# 7. Benchmark: the cost of a guided step at the real size, without downloaded weights

PRESETS = {   # (dLLM as Qwen2, reward model as Qwen3 with one label)
    "real": (dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,       # Dream-v0-Instruct-7B
                  num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=False),
             dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,         # Skywork-Reward-V2-
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,  # Qwen3-1.7B
                  rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False, num_labels=1, pad_token_id=151643)),
    "small": (dict(vocab_size=32768, hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False),
              dict(vocab_size=32768, hidden_size=384, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=6,
                   num_key_value_heads=2, head_dim=64, max_position_embeddings=4096, tie_word_embeddings=False,
                   num_labels=1, pad_token_id=0)),
}


def random_models(preset, device, dtype):
    """Randomly initialised dLLM and reward model of a preset's configurations, frozen."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Qwen2Config, Qwen3Config
    dllm_config, rm_config = PRESETS[preset] if isinstance(preset, str) else preset
    torch.manual_seed(0)
    with torch.device(device):
        dllm = AutoModelForCausalLM.from_config(Qwen2Config(**dllm_config), dtype=dtype)
        rm = AutoModelForSequenceClassification.from_config(Qwen3Config(**rm_config), dtype=dtype)
    return bidirectional(dllm).eval().requires_grad_(False), rm.eval().requires_grad_(False)


def benchmark(preset="small", device="cpu", dtype="auto", K=4, L=128, M=3, P=64, steps=3, method="entrgi"):
    """Times `steps` guided steps of `sample` on synthetic token ids, starting with half of the L
    positions masked (the average step of a T = L run), and splits each step into its parts.
    The floor: the dLLM forward plus M reward-model forward/backward passes on the same shapes,
    each timed alone. Measures; asserts nothing. Returns the figures (seconds per step)."""
    import resource
    from collections import defaultdict
    dtype = pick_dtype(device, dtype)
    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dllm, rm = random_models(preset, device, dtype)
    V, V_rm = dllm.config.vocab_size, rm.config.vocab_size
    mask_id, eos = V - 1, [V - 2]
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, V - 2, (P,), generator=g).tolist()
    prefix, suffix = torch.randint(0, V_rm, (P + 12,), generator=g).tolist(), torch.randint(0, V_rm, (5,), generator=g).tolist()
    embedding = rm.get_input_embeddings().weight[torch.arange(V, device=device) % V_rm]
    y0 = torch.randint(0, V - 2, (K, L), generator=g)
    y0.scatter_(1, torch.rand(K, L, generator=g).argsort(1)[:, : L // 2], mask_id)
    y0 = y0.to(device)
    cfg = Config(method, K, T=L // 2, L=L, M=M).check()                # one token revealed a step
    denoiser = make_denoiser(dllm, [prompt], K, L, mask_id)
    reward = make_reward(rm, [prefix], [suffix], K)

    class Done(Exception):
        pass

    def run(n, denoise, rewarder):
        """Seconds for n steps of the real sampler (a step-counting denoiser stops it)."""
        calls = [0]

        def counted(y):
            calls[0] += 1
            if calls[0] > n:
                sync()
                raise Done
            return denoise(y)
        sync()
        start = time.perf_counter()
        try:
            sample(counted, rewarder, embedding, [0], L, mask_id, eos, cfg, y0=y0)
        except Done:
            pass
        return time.perf_counter() - start

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run(1, denoiser, reward)                                           # warm-up
    total = run(steps, denoiser, reward) / steps

    # the same steps again, instrumented: synchronised timers around the parts, and stamps that
    # record when the backward pass reaches the reward's output, its input, and relax's input
    spent, stamp = defaultdict(float), {}

    class Stamp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, name):
            ctx.name = name
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            sync()
            stamp[ctx.name] = time.perf_counter()
            if ctx.name == "rm_in":
                spent["reward backward"] += stamp["rm_in"] - stamp["rm_out"]
            if ctx.name == "relax_in":
                spent["relaxation"] += stamp["relax_in"] - stamp["relax_out"]
            return grad, None

    def timed(name, fn):
        def wrapper(*a, **kw):
            sync()
            start = time.perf_counter()
            out = fn(*a, **kw)
            sync()
            if not (name == "sampling" and stamp.get("in_relax")):        # relax's own hard sample is relaxation
                spent[name] += time.perf_counter() - start
            return out
        return wrapper

    plain_relax, plain_sample = globals()["relax"], globals()["top_p_sample"]

    def relax_stamped(logits, *a, **kw):
        stamp["in_relax"] = True
        e, w = timed("relaxation", plain_relax)(Stamp.apply(logits, "relax_in"), *a, **kw)
        stamp["in_relax"] = False
        return Stamp.apply(e, "relax_out"), w

    def reward_stamped(e, valid):
        R = timed("reward forward", reward)(Stamp.apply(e, "rm_in"), valid)
        return Stamp.apply(R, "rm_out")

    globals().update(relax=relax_stamped, top_p_sample=timed("sampling", plain_sample))
    try:
        instrumented = run(steps, timed("denoiser", denoiser), reward_stamped) / steps
    finally:
        globals().update(relax=plain_relax, top_p_sample=plain_sample)
    parts = {k: spent[k] / steps for k in ("denoiser", "reward forward", "reward backward", "relaxation", "sampling")}
    parts["other"] = total - sum(parts.values())

    # the floor: the model passes alone, on the same shapes
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        denoiser(y0)
    sync()
    floor_dllm = time.perf_counter() - start
    E_rm = rm.get_input_embeddings().weight
    ids = torch.randint(0, V_rm, (K, len(prefix) + L + len(suffix)), generator=g).to(device)
    sync()
    start = time.perf_counter()
    for _ in range(M):
        x = E_rm[ids].detach().requires_grad_(True)
        torch.autograd.grad(rm_score(rm, x, torch.ones_like(ids, dtype=torch.bool)).sum(), x)
    sync()
    floor = floor_dllm + time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = {"preset": preset if isinstance(preset, str) else "custom", "device": device, "dtype": str(dtype).removeprefix("torch."),
              "K": K, "L": L, "M": M, "P": P, "steps": steps, "method": method, "parts_s": parts, "total_s": total,
              "instrumented_total_s": instrumented, "floor_s": floor, "floor_dllm_s": floor_dllm,
              "ratio": total / floor, ("peak_gpu_memory_gib" if cuda else "peak_rss_gib"): peak}
    print(f"benchmark: {result['preset']} preset, {device}, {result['dtype']}, K = {K}, L = {L} ({L // 2} masked), "
          f"M = {M}, prompt {P} tokens, {method}, {steps} steps")
    for name, seconds in parts.items():
        print(f"  {name:<16} {seconds * 1e3:9.1f} ms/step")
    print(f"  {'total':<16} {total * 1e3:9.1f} ms/step (instrumented: {instrumented * 1e3:.1f})")
    print(f"  {'floor':<16} {floor * 1e3:9.1f} ms/step (dLLM forward {floor_dllm * 1e3:.1f} + {M} x reward forward/backward)")
    print(f"  total / floor    {total / floor:9.2f}")
    print(f"  peak {'GPU memory' if cuda else 'RSS'}      {peak:9.2f} GiB")
    return result


if __name__ == "__main__":
    main()
