"""
A toy masked diffusion model whose every quantity is exact, for checking EntRGi's gradients.

V = 8 tokens, n = 4 positions, so all V^n = 4096 sequences can be enumerated.
- Data distribution p(x) ∝ exp(theta(x)), theta = unary + neighbour-pair potentials. The
  denoiser returns the exact conditionals p(x_l | revealed tokens), by enumeration.
- A fixed embedding table E (V, d) and a reward R(e) defined on ANY embeddings e (n, d):
      R(e) = sum_l u . e_l + sum_l e_l^T B e_{l+1}        (1) the text's reward
           + gamma * sum_l softplus(2 a . e_l)            (3) a nonlinear part, within each position
           + beta * sum_l gap(e_l)                        (2) a reward model's artefact
  (1) + (3) on token embeddings is the token-level reward r(x) = R(E[x]). (1) is multilinear in
      the positions, so under independent positions E_q[r] equals (1) at the mean embeddings;
      (3) (gamma = 0 unless asked for) is not: it bends the reward inside each position.
  (2) gap(e) = prod_i D_i / (D_i + 1), D_i = |e - E_i|^2, is zero, with a zero gradient, on
      every token embedding, rises between them (its curvature at a token is at most 2) and
      tends to 1 far from all of them: the score a reward model trained on discrete text gives
      inputs between tokens, unrelated to any text. The soft relaxation reads it (and its
      gradient); no text can collect it.
- J(psi) = E_{x ~ q_psi}[r(x)] and its gradient, exactly, by enumeration; the expected
  gradient of the straight-through and EntRGi estimators, exactly, by enumerating the hard sample.

Everything is float64 and fixed by one seed. The sampler is entrgi.sample itself: `denoiser`
and `reward` below are the two callables the 7B path also hands it.
"""

import math

import torch

import entrgi

V, n, d = 8, 4, 4
MASK = V                      # the mask id: one past the vocabulary (the denoiser never proposes it)
BETA = 4.0                    # weight of the off-token artefact (2)
DT = torch.float64

_g = torch.Generator().manual_seed(0)
E = torch.randn(V, d, generator=_g, dtype=DT)                        # token embeddings
u = torch.randn(d, generator=_g, dtype=DT)                           # (1) unary weights
B = torch.randn(d, d, generator=_g, dtype=DT) * 0.5                  # (1) neighbour-pair weights
unary = torch.randn(n, V, generator=_g, dtype=DT)                    # data potentials
pair = torch.randn(V, V, generator=_g, dtype=DT)
a = torch.randn(d, generator=_g, dtype=DT)                           # (3) the nonlinear part's projection
GAMMA = 0.5                                                          # its weight, where a table asks for it
X = torch.cartesian_prod(*[torch.arange(V)] * n)                     # (S, n) every sequence, S = V^n
_theta = unary[torch.arange(n), X].sum(1) + pair[X[:, :-1], X[:, 1:]].sum(1)
log_p = _theta - torch.logsumexp(_theta, 0)                          # (S,) log p(x)


def gap(e):
    """(..., d) -> (...): zero with zero gradient at every token embedding, in [0, 1) elsewhere."""
    D = ((e.unsqueeze(-2) - E) ** 2).sum(-1)                         # (..., V) squared distances
    return (D / (D + 1)).prod(-1)


def R(e, beta=BETA, gamma=0.0):
    """The reward on embeddings e (N, n, d) -> (N,)."""
    text = e @ u + torch.einsum("nld,de,nle->nl", e[:, :-1], B, e[:, 1:]).sum(-1, keepdim=True)
    return text.sum(-1) + gamma * torch.nn.functional.softplus(2 * e @ a).sum(-1) + beta * gap(e).sum(-1)


def r(x, gamma=0.0):
    """The token-level reward of sequences x (N, n) -> (N,): R on their embeddings, no artefact."""
    return R(E[x], beta=0.0, gamma=gamma)


r_X = r(X)                                                            # (S,) the reward of every sequence


def denoiser(y):
    """Exact conditionals: y (N, n), MASK where masked -> (N, n, V) logits = log p(x_l | revealed)."""
    consistent = ((y.unsqueeze(1) == MASK) | (y.unsqueeze(1) == X)).all(-1)     # (N, S)
    weight = torch.where(consistent, log_p, -math.inf).softmax(-1)              # p(x | revealed)
    marginal = weight @ torch.nn.functional.one_hot(X, V).to(DT).flatten(1)     # (N, n * V)
    return marginal.view(-1, n, V).log()


def reward(e, valid):
    """The reward callable for entrgi.sample: the toy has no EOS, so `valid` is all True."""
    return R(e)


def J(psi, tau=1.0, r_values=None):
    """Exact objective for psi (n, V), every position masked: E_{x ~ q_psi}[r(x)]."""
    logq = torch.log_softmax(psi / tau, -1)[torch.arange(n), X].sum(1)          # (S,) log q(x)
    return (logq.exp() * (r_X if r_values is None else r_values)).sum()


def exact_grad(psi, tau=1.0, r_values=None):
    psi = psi.detach().requires_grad_(True)
    return torch.autograd.grad(J(psi, tau, r_values), psi)[0]


def estimator_grads(psi, method, tau=1.0, reward_fn=R):
    """Gradient of reward_fn(relax(psi)) w.r.t. psi (n, V) for every hard sample x (top-p = 1):
    returns (S, n, V) gradients, row s for hard sample X[s], and (S,) their probabilities q(x)."""
    psi_s = psi.detach().expand(len(X), n, V).clone().requires_grad_(True)
    e, *_ = entrgi.relax(psi_s, E, method, tau, 1.0, None, x=X)
    grads = torch.autograd.grad(reward_fn(e).sum(), psi_s)[0]
    q_x = torch.log_softmax(psi.detach() / tau, -1)[torch.arange(n), X].sum(1).exp()
    return grads, q_x


def expected_grad(psi, method, tau=1.0, reward_fn=R):
    """The estimator's expectation over its hard sample, exactly."""
    grads, q_x = estimator_grads(psi, method, tau, reward_fn)
    return torch.einsum("s,snv->nv", q_x, grads)
