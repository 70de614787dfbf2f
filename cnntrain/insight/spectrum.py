"""Eigenvalues of a symmetric operator known only through products A v: Lanczos, Hutchinson, SLQ.

Pure NumPy on a `matvec` callable, so the tests hold each method to explicit matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BREAKDOWN = 1e-10   # beta below this times the largest |alpha| seen: the Krylov space is invariant, T is exact
SIGMA = 0.01        # Gaussian broadening of the density, as a fraction of the spectrum's width


@dataclass
class Lanczos:
    """The tridiagonal T = Q^T A Q of m Lanczos steps: diagonal alpha (m,), off-diagonal beta[:m-1], and
    beta[m-1], the size of the part of A q_m outside the Krylov space (0 when it is invariant)."""

    alpha: np.ndarray
    beta: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(theta, weights, residuals), theta ascending: the eigenvalues of T; weights = the squared first
        components of its eigenvectors (the quadrature weights of SLQ, summing to 1); residuals
        ||A y - theta y|| = |beta_m s_m| of each Ritz pair, so an eigenvalue of A lies within it of theta."""
        m = self.steps
        T = np.diag(self.alpha) + np.diag(self.beta[: m - 1], 1) + np.diag(self.beta[: m - 1], -1)
        theta, S = np.linalg.eigh(T)
        return theta, S[0] ** 2, np.abs(self.beta[m - 1] * S[m - 1])


def lanczos(matvec, v0: np.ndarray, steps: int, done=None) -> Lanczos:
    """Up to `steps` Lanczos steps from v0, with full reorthogonalization.

    Each new vector is orthogonalised against every earlier one, twice (classical Gram-Schmidt,
    "twice is enough"), which stores the m vectors (m x n floats). Without it, rounding makes the
    vectors lose orthogonality as soon as a Ritz value converges, and converged eigenvalues come
    back as spurious copies ("ghosts"). Stops early when the Krylov space is invariant (T is then
    exact) or when done(Lanczos) says so.
    """
    n = v0.size
    steps = min(steps, n)
    Q = np.empty((steps, n))
    Q[0] = v0 / np.linalg.norm(v0)
    alpha, beta = np.zeros(steps), np.zeros(steps)
    for j in range(steps):
        w = matvec(Q[j])
        alpha[j] = Q[j] @ w
        for _ in range(2):
            w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
        beta[j] = np.linalg.norm(w)
        if beta[j] <= BREAKDOWN * (np.abs(alpha[: j + 1]).max() + beta[:j].max(initial=0.0)):
            beta[j] = 0.0  # invariant subspace: the Ritz values are eigenvalues of A
            break
        if j + 1 == steps or (done is not None and done(Lanczos(alpha[: j + 1], beta[: j + 1]))):
            break
        Q[j + 1] = w / beta[j]
    return Lanczos(alpha[: j + 1], beta[: j + 1])


def extremes(matvec, v0: np.ndarray, top_k: int, bottom_k: int, max_steps: int, rtol: float = 1e-4,
             bottom_rtol: float | None = None) -> dict:
    """The top_k largest and bottom_k smallest eigenvalues by Lanczos, stopping once the top ones' Ritz
    residuals are below rtol, and the bottom ones' below bottom_rtol (default rtol), times the largest
    |Ritz value| (or after max_steps). The bottom of a spectrum whose mass crowds near it converges slowly.

    Returns {top (descending), top_residuals, bottom (ascending), bottom_residuals, steps, lanczos}.
    """
    bottom_rtol = rtol if bottom_rtol is None else bottom_rtol

    def converged(lz: Lanczos) -> bool:
        if lz.steps < top_k + bottom_k + 2:
            return False
        theta, _, res = lz.ritz()
        scale = np.abs(theta).max()
        return bool((res[len(res) - top_k :] <= rtol * scale).all() and (res[:bottom_k] <= bottom_rtol * scale).all())

    lz = lanczos(matvec, v0, max_steps, converged)
    theta, _, res = lz.ritz()
    top = min(top_k, len(theta))
    bottom = min(bottom_k, len(theta))
    return {"top": theta[::-1][:top], "top_residuals": res[::-1][:top], "bottom": theta[:bottom],
            "bottom_residuals": res[:bottom], "steps": lz.steps, "lanczos": lz}


def hutchinson(matvec, n: int, probes: int, rng: np.random.Generator) -> tuple[float, float]:
    """(trace estimate, its standard error): the mean of z^T A z over `probes` Rademacher vectors z
    (entries +-1, so E[z z^T] = I); each sample's variance is 2 * sum of the squared off-diagonal entries."""
    samples = np.empty(probes)
    for i in range(probes):
        z = rng.integers(0, 2, n).astype(np.float64) * 2 - 1
        samples[i] = z @ matvec(z)
    stderr = float(samples.std(ddof=1) / np.sqrt(probes)) if probes > 1 else float("nan")
    return float(samples.mean()), stderr


def slq(runs: list[Lanczos]) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature: (nodes, weights) of the spectral measure (1/n) sum_i delta(t - lambda_i).

    Each run of m Lanczos steps from a random unit vector v gives an m-point Gauss quadrature of
    v^T f(A) v, which estimates (1/n) tr f(A): its nodes are the Ritz values, its weights the squared
    first components of T's eigenvectors. Weights are averaged over the runs, so they sum to 1.
    """
    nodes, weights = [], []
    for lz in runs:
        theta, w, _ = lz.ritz()
        nodes.append(theta)
        weights.append(w / len(runs))
    return np.concatenate(nodes), np.concatenate(weights)


def density(nodes: np.ndarray, weights: np.ndarray, points: int = 1000, sigma: float | None = None):
    """(grid, phi): the quadrature broadened by Gaussians of width sigma (default SIGMA times the nodes'
    range), phi(t) = sum_j w_j N(t; theta_j, sigma^2), over the nodes' range +- 5 sigma; it integrates to 1."""
    low, high = float(nodes.min()), float(nodes.max())
    sigma = sigma or SIGMA * max(high - low, 1e-12 * max(abs(low), abs(high), 1.0))
    grid = np.linspace(low - 5 * sigma, high + 5 * sigma, points)
    phi = (weights[None, :] * np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2)).sum(axis=1)
    return grid, phi / (sigma * np.sqrt(2 * np.pi))


def negative_mass(nodes: np.ndarray, weights: np.ndarray) -> float:
    """The share of the spectrum's absolute mass on negative eigenvalues, sum |lambda<0| / sum |lambda|
    (from the quadrature); near-zero eigenvalues, whose sign is noise, weigh nothing."""
    absolute = weights * np.abs(nodes)
    total = float(absolute.sum())
    return float(absolute[nodes < 0].sum()) / total if total > 0 else 0.0
