"""`harness oracle`: the noisy-oracle reference of a task (docs/protocol.md, Noisy-oracle reference).

A "simulator" that reads each pair's true activation, degraded to a target detection AUROC a in two forms
(`harness.score.oracle`), scored exactly as `harness eval` scores a submission: the task's quantile calibration,
TopK re-sparsification and patching (`score.calibrate`, `score.conditions`), the protocol's intervals
(`score.metrics`). One prefix pass over the test split patches every (form, a) at once. The report says what
detection quality an explanation method needs before partial rewriting can tell it from deleting the latents.

Not a method: it knows the answers. Its file (`ORACLE_FILE` in the task's results folder) is read by the site
as a reference line beside the leaderboard and skipped by everything that ranks results. The file's schema
(`OracleReport`) lives with the result file's in `harness/result.py`.
"""

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from harness import __version__
from harness.result import (
    ORACLE_FIGURE,
    ORACLE_FILE,
    ORACLE_SCHEMA,
    Interval,
    OracleDiagnostic,
    OracleProvenance,
    OracleReport,
    OracleRow,
    TaskRef,
)

NOISE_MODEL = ("prediction = signal + sigma_j * N(0,1), signal = true activation (graded) or 1{activation > 0} "
               "(binary); sigma_j solves mean_i Phi(signal_i / (sigma_j sqrt 2)) = a over latent j's detection "
               "positives (its expected detection AUROC; binary: sigma = 1/(sqrt2 Phi^-1(a))); the same N(0,1) "
               "draws at every level and form; a = 1 is no noise")


def _pct(x: np.ndarray, value: float) -> Interval:
    from harness.score.metrics import _percentile_ci

    x = x[np.isfinite(x)]
    if not len(x):
        return Interval(value, math.nan, math.nan, "no resample defines it")
    return Interval(value, *_percentile_ci(x))


def detection_positive_values(prep, model, coder, spec, device) -> list[np.ndarray]:
    """Per rewritten latent, the true activation at each of its detection positives (in `det_pos` order).

    `prepare` keeps only which contexts are positives, so their blocks are encoded again (the same
    `encode_positions` pass `prepare` chose them with)."""
    from harness.data.prepare import encode_positions
    from harness.model.patch import resolve_hookpoint

    T, lo = spec.contexts.T, spec.min_position()
    pos = prep.det_pos
    rows = np.unique(pos[pos >= 0])
    blocks = np.unique(prep.det_contexts[rows, 0])
    out = [np.zeros(0) for _ in range(len(pos))]
    if not len(blocks):
        return out
    v, i = encode_positions(model, resolve_hookpoint(model, spec.coder.hookpoint), coder, spec.coder.kind,
                            prep.splits["detection"][blocks], lo, T, "oracle: detection positives", device)
    where = {int(b): n for n, b in enumerate(blocks)}
    for e, j in enumerate(prep.rewritten):
        vals = []
        for r in pos[e][pos[e] >= 0]:
            b, end = prep.det_contexts[r]
            slot_v, slot_i = v[where[int(b)], int(end) - lo], i[where[int(b)], int(end) - lo]
            hit = slot_v[(slot_i.astype(np.int64) == int(j)) & (slot_v > 0)]
            vals.append(float(hit[0]) if len(hit) else 0.0)
        out[e] = np.asarray(vals)
    return out


def run_oracle(task: str, levels=None, seed: int = 0, results_dir: Path = Path("results"),
               output: Path | None = None, device: str = "auto", overrides=(), command: str = "",
               console=None) -> tuple[OracleReport, Path]:
    from harness.data.prepare import prepare
    from harness.io import writable_dir
    from harness.report.write import true_values
    from harness.score.conditions import ALL, run_conditions, zero
    from harness.score.metrics import bootstrap_indices, recovery_denominator
    from harness.score.oracle import DEFAULT_LEVELS, check_levels
    from harness.task.inputs import TaskInputs
    from harness.task.spec import load_task

    started = time.time()
    levels = check_levels(DEFAULT_LEVELS if levels is None else levels)
    spec = load_task(task, list(overrides))
    inputs = TaskInputs(spec, device)
    inputs.check()
    out_dir = writable_dir(Path(output) if output is not None else Path(results_dir) / spec.id, "output")
    prep = prepare(spec, inputs=inputs)
    model, _ = inputs.subject()
    coder = inputs.coder()
    latents = np.asarray(prep.rewritten, dtype=np.int64)
    m = len(latents)

    cal_x = true_values(prep.calib_latents, latents).astype(np.float64)
    test_x = true_values(prep.test_latents, latents).astype(np.float64)
    pos_x = detection_positive_values(prep, model, coder, spec, inputs.device)
    n_neg = (prep.det_neg >= 0).sum(1)
    fallback = [prep.table.nonzero_values(int(j)) if prep.table.exact else np.zeros(0) for j in latents]

    rng = np.random.default_rng(seed)
    sc = spec.scoring
    noise = _Noise(cal=rng.standard_normal(cal_x.shape), test=rng.standard_normal(test_x.shape),
                   pos=[rng.standard_normal(len(p)) for p in pos_x], neg=[rng.standard_normal(int(k)) for k in n_neg])
    sims, meta = _degraded(spec, prep, latents, levels, cal_x, test_x, pos_x, fallback, noise)
    patched = run_conditions(model, coder, spec.coder.hookpoint, spec.coder.kind, prep.splits["test"], latents,
                             sims, {ALL: latents}, inputs.device)
    base = prep.ce_base
    n_test = len(base["clean"])
    boot = bootstrap_indices(n_test, sc.bootstrap, sc.seed)
    z = patched.ce[zero(ALL)]
    rows, diags = _rows(patched, meta, z, base["coder"], boot, sc.bootstrap, sc.seed)
    report = OracleReport(
        schema=ORACLE_SCHEMA, task=TaskRef(id=spec.id, hash=spec.hash),
        provenance=OracleProvenance(
            harness_version=__version__, date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command=command, seed=seed, levels=list(levels), bootstrap_draws=sc.bootstrap, bootstrap_seed=sc.seed,
            device=str(inputs.device), wall_seconds=round(time.time() - started, 1), noise_model=NOISE_MODEL),
        n_latents=m, n_calibration=len(cal_x), n_test=n_test, n_detection_positive=int(sum(len(p) for p in pos_x)),
        n_latents_unfired_in_calibration=int(((cal_x > 0).sum(0) == 0).sum()),
        recovery_denominator=recovery_denominator(z, base["coder"], boot), rows=rows, diagnostics=diags)
    out_dir.mkdir(parents=True, exist_ok=True)
    from harness.report.plots import plot_oracle

    report.figure = plot_oracle(report, out_dir / ORACLE_FIGURE).name
    path = report.to_json(out_dir / ORACLE_FILE)
    return report, path


@dataclass
class _Noise:
    """The N(0,1) draws every level and form shares: calibration, test, and per latent its detection examples."""
    cal: np.ndarray
    test: np.ndarray
    pos: list[np.ndarray]
    neg: list[np.ndarray]


_Meta = dict[str, tuple[str, float, np.ndarray, np.ndarray]]   # name -> form, level, detection AUROCs, sigmas


def _degraded(spec, prep, latents: np.ndarray, levels, cal_x: np.ndarray, test_x: np.ndarray,
              pos_x: list[np.ndarray], fallback: list[np.ndarray], eps: _Noise) -> tuple[dict[str, np.ndarray], _Meta]:
    """Each (form, level)'s calibrated test values, and what it reached in detection."""
    from harness.io import progress
    from harness.score.calibrate import calibrate
    from harness.score.detection import detection_table, threshold_values
    from harness.score.oracle import FORMS, noise_scales, noisy

    fire_rate = prep.table.fire_rate[latents]
    sims: dict[str, np.ndarray] = {}
    meta: _Meta = {}
    with progress() as prog:
        bar = prog.add_task("oracle: noise, predictions, calibration", total=len(FORMS) * len(levels))
        for form in FORMS:
            for a in levels:
                sigma = noise_scales(form, pos_x, fallback, a)
                p_cal = noisy(form, cal_x, sigma, eps.cal)
                p_test = noisy(form, test_x, sigma, eps.test)
                det_pos = [noisy(form, x[:, None], sigma[e:e + 1], z[:, None])[:, 0]
                           for e, (x, z) in enumerate(zip(pos_x, eps.pos, strict=True))]
                det_neg = [sigma[e] * z for e, z in enumerate(eps.neg)]
                auroc, _ = detection_table(det_pos, det_neg, threshold_values(spec, p_cal, fire_rate))
                name = f"{form}@{a:g}"
                sims[name] = calibrate("quantile", p_cal, p_test, prep.table, latents)
                meta[name] = (form, a, auroc, sigma)
                if form == "graded" and a == 1.0:
                    sims[f"{name}/none"] = calibrate("none", p_cal, p_test, prep.table, latents)
                    sims[f"{name}/prompt-fit"] = calibrate("prompt-fit", p_cal, p_test, prep.table, latents)
                prog.advance(bar)
    return sims, meta


def _rows(patched, meta: _Meta, z: np.ndarray, coder_ce: np.ndarray, boot: np.ndarray, draws: int,
          seed: int) -> tuple[list[OracleRow], list[OracleDiagnostic]]:
    """One row per (form, level), and the two diagnostics of the noiseless graded oracle."""
    from harness.score.conditions import ALL, simulated
    from harness.score.metrics import (
        bootstrap_indices,
        mean_ci,
        paired_difference,
        recovery,
        sensitivity_specificity,
    )
    from harness.score.oracle import bootstrap_sens_spec

    rows = []
    for name, (form, a, auroc, sigma) in meta.items():
        s = patched.ce[simulated(name, ALL)]
        active = patched.active_sim[name]
        sens, spec_ = sensitivity_specificity(patched.active_true, active)
        b_sens, b_spec = bootstrap_sens_spec(patched.active_true, active, boot)
        fin = auroc[np.isfinite(auroc)]
        rows.append(OracleRow(
            form=form, target_auroc=a,
            realised_auroc=(mean_ci(fin, bootstrap_indices(len(fin), draws, seed)) if len(fin) >= 2
                            else Interval(float(np.mean(fin)) if len(fin) else math.nan, math.nan, math.nan,
                                          "fewer than 2 latents with detection examples")),
            sigma_median=float(np.median(sigma)),
            recovery=recovery(z, s, coder_ce),
            sim_minus_zero_mean=paired_difference(s, z, boot)["mean"],
            sensitivity=_pct(b_sens, float(np.nanmean(sens)) if np.isfinite(sens).any() else math.nan),
            specificity=_pct(b_spec, float(np.nanmean(spec_)) if np.isfinite(spec_).any() else math.nan),
            active_share=float(active.mean())))
    diags = []
    for cal, note in (("none", "the true activations patched as they are: any shortfall from 1 is the patching "
                               "path itself (TopK of the true code is the code)"),
                      ("prompt-fit", "quantile map fit on the test predictions themselves: a shortfall here but "
                                     "not under 'none' is the activation sample's distribution differing from the "
                                     "last position's")):
        key = f"graded@1/{cal}"
        if simulated(key, ALL) in patched.ce:
            s = patched.ce[simulated(key, ALL)]
            diags.append(OracleDiagnostic(name="graded@1", calibration=cal, recovery=recovery(z, s, coder_ce),
                                          sim_minus_zero_mean=paired_difference(s, z, boot)["mean"], note=note))

    return rows, diags


def table_rows(report: OracleReport) -> list[list[str]]:
    """form, a, realised AUROC, recovery, simulated − latent zero, sensitivity, specificity: value [lo, hi]."""
    from harness.report.format import interval

    return [[r.form, f"{r.target_auroc:g}", f"{r.realised_auroc.value:.3f}", interval(r.recovery, 2),
             interval(r.sim_minus_zero_mean, 3, sign=True), interval(r.sensitivity, 2), interval(r.specificity, 2)]
            for r in report.rows]
