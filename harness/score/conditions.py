"""docs/protocol.md §5-6: the conditions a result compares, their CE on the test split, and the headline.

A condition is one way of producing the rewritten latents at the last position: deleted (`latent_zero`)
or simulated under one calibration, for the full rewritten set or a subset chosen by a rule at a fraction.
Its CE over the test contexts comes from one prefix pass per batch (`Patcher`), each condition recomputing
only the last position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from harness.io import batch_size, progress
from harness.model.coder import SparseCoder
from harness.model.patch import Patcher
from harness.names import RankMetric
from harness.result import ConditionRow, Headline, condition_row
from harness.score.calibrate import CALIBRATION_MODES
from harness.score.metrics import (
    macro,
    mean_ci,
    median_ci,
    paired_difference,
    recovery,
    recovery_denominator,
    select_latents,
)

# How a subset of the rewritten latents is chosen for the partial-rewriting curves.
SUBSET_RULES = ("top-scoring", "random")


@dataclass(frozen=True)
class Subset:
    """Which rewritten latents a condition rewrites: all of them, or `fraction` of them by `rule`."""

    rule: str              # all | top-scoring | random
    fraction: float = 1.0

    @property
    def name(self) -> str:
        return "all" if self.rule == "all" else f"{self.rule}@{self.fraction:g}"


ALL = Subset("all")


@dataclass(frozen=True)
class Condition:
    """A rewriting condition: `latent_zero` (calibration None) or `simulated` under a calibration mode."""

    name: str              # latent_zero | simulated
    calibration: str | None
    subset: Subset

    @property
    def key(self) -> str:
        """Its name in the side file (`ce_<key>`): e.g. latent_zero__all, simulated__quantile__random@0.1."""
        parts = [self.name] + ([self.calibration] if self.calibration else []) + [self.subset.name]
        return "__".join(parts)


def zero(subset: Subset) -> Condition:
    return Condition("latent_zero", None, subset)


def simulated(calibration: str, subset: Subset) -> Condition:
    return Condition("simulated", calibration, subset)


def choose_subsets(latents: np.ndarray, fractions: Sequence[float], scores: np.ndarray,
                   seed: int) -> dict[Subset, np.ndarray]:
    """The full set and, for each rule and fraction below 1, the latents it keeps (sorted)."""
    out = {ALL: latents}
    for rule in SUBSET_RULES:
        for f in fractions:
            if f < 1.0:
                out[Subset(rule, f)] = np.sort(select_latents(rule, latents, f, scores, seed))
    return out


@dataclass
class PatchedCE:
    """CE per test context under every condition, and which latents are active in the true and the simulated
    (re-sparsified) codes of the full set."""

    ce: dict[Condition, np.ndarray]                # [n_test] each
    active_true: np.ndarray                        # [n_test, m] bool
    active_sim: dict[str, np.ndarray]              # calibration mode -> [n_test, m] bool


@torch.inference_mode()
def run_conditions(model, coder: SparseCoder, hookpoint: str, kind: str, windows: np.ndarray, latents: np.ndarray, sims: dict[str, np.ndarray], subsets: dict[Subset, np.ndarray],
                   device) -> PatchedCE:
    """CE over the test windows for latent_zero(S) and simulated(S, calibration) for every subset S.

    The simulated values replace the true ones for the subset's latents, then the coder's own rule re-sparsifies
    the code (TopK: the coder's k, so a simulated latent only counts if it would have won a slot; JumpReLU: its
    threshold; ReLU: positive values).
    """
    n = len(windows)
    col = {int(j): c for c, j in enumerate(latents)}
    sub_cols = {s: np.asarray([col[int(j)] for j in S]) for s, S in subsets.items()}
    conds = [zero(s) for s in subsets] + [simulated(c, s) for c in sims for s in subsets]
    ce = {c: np.zeros(n) for c in conds}
    active_true = np.zeros((n, len(latents)), bool)
    active_sim = {c: np.zeros((n, len(latents)), bool) for c in sims}
    lat_t = torch.as_tensor(latents, device=device)
    patcher = Patcher(model, hookpoint, kind)
    batch = batch_size()
    with progress() as prog:
        t = prog.add_task(f"patching {len(conds)} conditions", total=n)
        for s in range(0, n, batch):
            ids = torch.from_numpy(windows[s:s + batch]).to(device)
            b = ids.shape[0]
            with patcher.prefix(ids[:, :-1]) as h:
                last = h.capture(ids[:, -1])
                z_true = coder.code(last.x)
                active_true[s:s + b] = (z_true[:, lat_t] > 0).cpu().numpy()
                keys, reps = [], []
                for subset, S in subsets.items():
                    idx = torch.as_tensor(S, device=device)
                    z = z_true.clone()
                    z[:, idx] = 0
                    keys.append(zero(subset))
                    reps.append(coder.decode_dense(z, last.x))
                    cols = torch.as_tensor(sub_cols[subset], device=device)
                    for cname, pred in sims.items():
                        zs = z_true.clone()
                        zs[:, idx] = torch.as_tensor(pred[s:s + b], device=device, dtype=zs.dtype)[:, cols]
                        zs = coder.resparsify(zs)
                        if subset == ALL:
                            active_sim[cname][s:s + b] = (zs[:, lat_t] > 0).cpu().numpy()
                        keys.append(simulated(cname, subset))
                        reps.append(coder.decode_dense(zs, last.x))
                # Several conditions per forward pass: bigger matrix products run faster on a CPU.
                out = h.ce_batch(reps, ids[:, -1]).double().cpu().numpy()
                for key, row in zip(keys, out, strict=True):
                    ce[key][s:s + b] = row
            prog.advance(t, b)
    return PatchedCE(ce, active_true, active_sim)


def condition_rows(ce: dict[Condition, np.ndarray], subsets: dict[Subset, np.ndarray], clean: np.ndarray,
                   coder_ce: np.ndarray, boot: np.ndarray) -> list[ConditionRow]:
    """One row per condition with its intervals (paired over the same bootstrap resamples of test contexts).

    The full set is the fraction-1.0 point of both curves, so its rows appear once per subset rule too.
    """
    rows = []
    for subset, S in subsets.items():
        z = ce[zero(subset)]
        rows.append(ConditionRow(
            name="latent_zero", calibration=None, selection=subset.rule, fraction=subset.fraction,
            n_latents=int(len(S)), ce_mean=float(z.mean()), delta_ce_mean=mean_ci(z - clean, boot),
            delta_ce_median=median_ci(z - clean, boot), recovery=None, diff_vs_latent_zero=None))
        for mode in CALIBRATION_MODES:
            sim = ce[simulated(mode, subset)]
            rows.append(ConditionRow(
                name="simulated", calibration=mode, selection=subset.rule, fraction=subset.fraction,
                n_latents=int(len(S)), ce_mean=float(sim.mean()),
                delta_ce_mean=mean_ci(sim - clean, boot),
                delta_ce_median=median_ci(sim - clean, boot),
                recovery=recovery(z, sim, coder_ce, boot),
                diff_vs_latent_zero=paired_difference(sim, z, boot)["mean"]))
    for row in [r for r in rows if r.selection == "all"]:
        for rule in SUBSET_RULES:
            rows.append(ConditionRow(**{**row.__dict__, "selection": rule}))
    return rows


def _finite_mean(x: np.ndarray) -> float:
    return macro(x) if np.isfinite(x).any() else float("nan")


def headline(rows: list[ConditionRow], ce: dict[Condition, np.ndarray], ce_base: dict[str, np.ndarray],
             boot: np.ndarray, sens: np.ndarray, spec: np.ndarray, auroc: np.ndarray, bacc: np.ndarray,
             auroc_boot: np.ndarray | None, rank_by: RankMetric) -> Headline:
    """The quantile-calibrated full rewrite, with the numbers that put it in context."""
    head = condition_row(rows, simulated("quantile", ALL).key)
    head_zero = condition_row(rows, zero(ALL).key)
    clean, coder_ce, zero_out = ce_base["clean"], ce_base["coder"], ce_base["zero_output"]
    finite = auroc[np.isfinite(auroc)]
    assert head.recovery is not None and head.diff_vs_latent_zero is not None
    return Headline(
        calibration="quantile",
        recovery=head.recovery,
        delta_ce_median=head.delta_ce_median,
        delta_ce_mean=head.delta_ce_mean,
        latent_zero_delta_ce_median=head_zero.delta_ce_median,
        sim_minus_zero_mean=head.diff_vs_latent_zero,
        sensitivity=_finite_mean(sens),
        specificity=_finite_mean(spec),
        detection_auroc=_finite_mean(auroc),
        # Over latents (each latent's AUROC is one observation): what orders methods where CE cannot.
        detection_auroc_ci=mean_ci(finite, auroc_boot) if auroc_boot is not None else None,
        rank_by=rank_by,
        detection_balanced_accuracy=_finite_mean(bacc),
        recovery_denominator=recovery_denominator(ce[zero(ALL)], coder_ce, boot),
        coder_delta_ce_median=median_ci(coder_ce - clean, boot),
        zero_output_delta_ce_median=(median_ci(zero_out - clean, boot)
                                     if np.isfinite(zero_out).all() else None),
    )
