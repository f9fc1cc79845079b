"""python -m toy: the estimators' gradients against the exact one, and guided sampling, on the toy."""

import math
import time

import torch

import entrgi
import toy

METHODS = ("soft", "aps", "entrgi")


TABLES = (   # (title, the reward on embeddings, the token-level reward of every sequence)
    (f"R = (1) + (2): the multilinear text reward and the artefact (beta = {toy.BETA})", toy.R, toy.r_X),
    (f"R = (1) + (3): the text reward bent within each position (gamma = {toy.GAMMA}), no artefact",
     lambda e: toy.R(e, beta=0.0, gamma=toy.GAMMA), toy.r(toy.X, gamma=toy.GAMMA)),
    (f"R = (1) + (3) + (2): the bent text reward and the artefact",
     lambda e: toy.R(e, gamma=toy.GAMMA), toy.r(toy.X, gamma=toy.GAMMA)),
)


def gradient_table(reward_fn=toy.R, r_values=None, scales=(32, 16, 8, 4, 2, 1, 0.5, 0), tau=1.0):
    """psi = scale * (a fixed random (n, V)), every position masked, top-p = 1."""
    base = torch.randn(toy.n, toy.V, generator=torch.Generator().manual_seed(1), dtype=toy.DT)
    cos = torch.nn.functional.cosine_similarity
    rows = []
    for scale in scales:
        psi = base * scale
        H = (entrgi.entropy(torch.softmax(psi / tau, -1)) / math.log(toy.V)).mean().item()
        exact = toy.exact_grad(psi, tau, r_values)
        row = {"scale": scale, "H": H}
        for method in METHODS:
            grads, q_x = toy.estimator_grads(psi, method, tau, reward_fn)
            expected = torch.einsum("s,snv->nv", q_x, grads)
            row[method] = (cos(expected.flatten(), exact.flatten(), 0).item(),             # expected gradient
                           ((expected - exact).norm() / exact.norm()).item(),
                           (q_x * (grads - exact).flatten(1).norm(dim=1)).sum().item()   # one sample
                           / exact.norm().item())
        rows.append(row)
    return rows


def sampling_table(seeds=200, K=4, lrs=(0.5, 2.0)):
    """Each method through entrgi.sample, seeds x K trajectories; the final r of the tokens."""
    rows = []
    for lr in lrs:
        for method in ("bon",) + METHODS:
            if method == "bon" and lr != lrs[0]:
                continue
            cfg = entrgi.Config(method=method, K=K, T=toy.n, L=toy.n, M=3, lr=lr)
            y, _ = entrgi.sample(toy.denoiser, toy.reward, toy.E, list(range(seeds)), toy.MASK, [], cfg)
            r = toy.r(y).view(seeds, K)
            per_seed = r.mean(1)
            rows.append({"method": method, "lr": lr if method != "bon" else None, "mean": r.mean().item(),
                         "se": (per_seed.std() / math.sqrt(seeds)).item(), "top1": r.max(1).values.mean().item()})
    return rows


def main():
    torch.set_num_threads(1)          # tiny tensors: one thread is fastest, and keeps its time on a busy machine
    start = time.perf_counter()
    print(f"Toy: V = {toy.V} tokens, n = {toy.n} positions, d = {toy.d}.")
    print("1. Gradients of J(psi) = E_q[r(x)] w.r.t. psi (n x V), every position masked, tau = 1, top-p = 1.")
    print("   H: mean entropy / log V. cos, rel: the estimator's expected gradient (its hard sample")
    print("   enumerated) against the exact one; 1-sample: E over the hard sample of |g - g*| / |g*|.")
    head = " ".join(f"{m + ' cos':>11} {'rel':>6} {'1-sample':>8}" for m in METHODS)
    for letter, (title, reward_fn, r_values) in zip("abc", TABLES):
        print(f"\n{letter}) {title}\n\n{'scale':>6} {'H':>6} {head}")
        for row in gradient_table(reward_fn, r_values):
            cells = " ".join(f"{row[m][0]:11.3f} {row[m][1]:6.3f} {row[m][2]:8.3f}" for m in METHODS)
            print(f"{row['scale']:6g} {row['H']:6.3f} {cells}")
    seeds = 200
    J_data = (toy.log_p.exp() * toy.r_X).sum().item()
    print(f"\n2. Guided sampling with table a's reward, through entrgi.sample: T = L = {toy.n}, K = 4, M = 3, "
          "tau = 0.7,")
    print(f"   top-p = 0.95, {seeds} seeds x 4 trajectories per row. Final r of the sampled tokens: mean, its")
    print(f"   standard error over seeds, and Top@1 (best of the 4, averaged over seeds). For scale:")
    print(f"   E_p[r] = {J_data:.2f} exactly under the data distribution, max_x r(x) = {toy.r_X.max().item():.2f}.\n")
    print(f"{'method':>8} {'eta':>5} {'mean r':>8} {'se':>6} {'Top@1':>7}")
    for row in sampling_table(seeds):
        lr = "-" if row["lr"] is None else f"{row['lr']:g}"
        print(f"{row['method']:>8} {lr:>5} {row['mean']:8.2f} {row['se']:6.2f} {row['top1']:7.2f}")
    print(f"\n({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
