"""The noisy oracle (docs/protocol.md, Noisy-oracle reference): simulated values that read the true activation,
degraded to a chosen detection AUROC. Pure numpy/scipy.

Both forms are "signal + Gaussian noise", the equal-variance binormal family:

* `graded` knows the magnitude: signal s = the true activation x (0 where the latent does not fire);
* `binary` knows only firing: signal s = 1{x > 0}.

A prediction is p = s + σ·ε with ε ~ N(0, 1) independent per (context, latent). On the detection split a
positive has x_i > 0 and every negative has x = 0, so for one positive i and one negative

    P(p_i > p_neg) = P(x_i + σ(ε_1 − ε_2) > 0) = Φ(s_i / (σ√2)),

and the expected AUROC of latent j is A_j(σ) = mean over its positives of Φ(s_i / (σ√2)) — exactly, given the
positives' signals; the noise is the only randomness. A_j falls strictly from 1 (σ → 0) to ½ (σ → ∞), so
σ_j(a) solving A_j(σ) = a is unique: for the binary form it is 1 / (√2·Φ⁻¹(a)) for every latent, for the
graded form it is found by bisection on the latent's own detection positives. a = 1 is σ = 0 (no noise).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr, ndtri

from harness.errors import HarnessError

FORMS = ("graded", "binary")
DEFAULT_LEVELS = (0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def check_levels(levels) -> tuple[float, ...]:
    """Target AUROCs, each in (0.5, 1]: at 0.5 the noise would be infinite."""
    out = tuple(float(a) for a in levels)
    if not out:
        raise HarnessError("--levels: give at least one target AUROC, e.g. 0.6,0.8,1.0")
    bad = [a for a in out if not (0.5 < a <= 1.0) or not math.isfinite(a)]
    if bad:
        raise HarnessError(f"--levels: {bad[0]:g} is not a target AUROC in (0.5, 1]; e.g. 0.6,0.7,0.8,0.9,0.95,1.0")
    return out


def signal(form: str, x: np.ndarray) -> np.ndarray:
    """The noise-free oracle answer for true activations x."""
    x = np.asarray(x, dtype=np.float64)
    if form == "graded":
        return x
    if form == "binary":
        return (x > 0).astype(np.float64)
    raise HarnessError(f"unknown oracle form {form!r}; use one of: {', '.join(FORMS)}")


def expected_auroc(pos_signal: np.ndarray, sigma: float) -> float:
    """A(σ) = mean_i Φ(s_i / (σ√2)) for positives with signals s_i > 0 against negatives with signal 0."""
    s = np.asarray(pos_signal, dtype=np.float64)
    if sigma == 0:
        return float(np.mean(np.where(s > 0, 1.0, 0.5)))
    return float(np.mean(ndtr(s / (sigma * math.sqrt(2.0)))))


def solve_sigma(pos_signal: np.ndarray, a: float, rel_tol: float = 1e-10) -> float:
    """The σ ≥ 0 with expected_auroc(pos_signal, σ) = a (bisection on log σ; A is strictly decreasing)."""
    s = np.asarray(pos_signal, dtype=np.float64)
    s = s[s > 0]
    if len(s) == 0:
        raise HarnessError("no positive signal to solve the oracle's noise for")
    if a >= 1.0:
        return 0.0
    if np.all(s == s[0]):
        return float(s[0] / (math.sqrt(2.0) * ndtri(a)))   # binormal: a = Φ(d'/√2) with d' = s/σ
    # Bracket: at σ = max(s)/(√2 Φ⁻¹(a)) every term is ≤ a, at min(s)/(...) every term is ≥ a.
    lo, hi = float(s.min() / (math.sqrt(2.0) * ndtri(a))), float(s.max() / (math.sqrt(2.0) * ndtri(a)))
    lo, hi = math.log(lo), math.log(hi)
    while hi - lo > rel_tol:
        mid = 0.5 * (lo + hi)
        if expected_auroc(s, math.exp(mid)) > a:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def noise_scales(form: str, det_pos_values: list[np.ndarray], fallback: list[np.ndarray], a: float) -> np.ndarray:
    """σ_j per latent for target AUROC a: solved on latent j's detection positives (their true activations), or
    on `fallback[j]` (its non-zero activations in the activation sample) when it has no detection positive."""
    out = np.zeros(len(det_pos_values))
    for j, (pos, fb) in enumerate(zip(det_pos_values, fallback, strict=True)):
        src = pos if np.any(np.asarray(pos) > 0) else fb
        if not np.any(np.asarray(src) > 0):
            out[j] = 0.0   # never fires anywhere: the oracle answers 0 throughout, noise cannot matter
            continue
        out[j] = solve_sigma(signal(form, src), a)
    return out


def noisy(form: str, x: np.ndarray, sigma: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Oracle predictions for true activations x [n, m] with per-latent σ [m] and standard-normal draws eps
    [n, m]. The same eps at every level (common random numbers): a context's prediction moves only by σ."""
    return signal(form, x) + np.asarray(sigma)[None, :] * eps


def bootstrap_sens_spec(true_active: np.ndarray, sim_active: np.ndarray, boot_idx: np.ndarray,
                        chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Macro sensitivity and specificity (`metrics.sensitivity_specificity`, averaged over latents where defined)
    on each bootstrap resample of test contexts: two [n_boot] arrays.

    A resample's counts are its row multiplicities times the per-row indicators, so each chunk of resamples is
    one matrix product instead of a pass per draw.
    """
    t = np.asarray(true_active, bool)
    s = np.asarray(sim_active, bool)
    n = t.shape[0]
    mats = np.stack([t & s, t, ~t & ~s, ~t]).astype(np.float32)        # tp, pos, tn, neg: [4, n, m]
    sens, spec = np.empty(len(boot_idx)), np.empty(len(boot_idx))
    for lo in range(0, len(boot_idx), chunk):
        idx = np.asarray(boot_idx[lo:lo + chunk], dtype=np.int64)
        counts = np.zeros((len(idx), n), np.float32)
        np.add.at(counts, (np.repeat(np.arange(len(idx)), n), idx.ravel()), 1.0)
        # float32 products of small integers are exact (< 2^24); the ratios are taken in float64.
        tp, pos, tn, neg = ((counts @ mm).astype(np.float64) for mm in mats)
        with np.errstate(invalid="ignore", divide="ignore"):
            se = np.where(pos > 0, tp / np.maximum(pos, 1), np.nan)
            sp = np.where(neg > 0, tn / np.maximum(neg, 1), np.nan)
        for out, v in ((sens, se), (spec, sp)):
            ok = np.isfinite(v)
            out[lo:lo + len(idx)] = np.where(ok.any(1), np.nansum(v, 1) / np.maximum(ok.sum(1), 1), np.nan)
    return sens, spec
