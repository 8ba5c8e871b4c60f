"""Writing one run's result: file names, the per-context side file, figures, provenance and method notes."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from harness import __version__
from harness.data.prepare import Prepared
from harness.data.table import ActivationTable
from harness.io import save_npz, sha256_file
from harness.result import (
    SIDE,
    BootstrapMethod,
    DetectionThresholdMethod,
    IntervalMethods,
    Methods,
    Provenance,
    QuantileEstimator,
    Record,
    Result,
    side_layout_errors,
)
from harness.score.conditions import Condition, Subset
from harness.score.metrics import CI_LEVEL
from harness.task.cascade import CascadeSettings
from harness.task.spec import TaskSpec


def result_tag(method: str, submission_sha256: str, simulator_key: str, spec: TaskSpec | None = None,
               cascade: CascadeSettings | None = None) -> str:
    """A stable file stem per (submission, simulator, cascade): re-running overwrites, never forks.

    A cascade the task fixes is part of its hash, so its results need no tag; one asked for on the command
    line is named in the stem, so that it never overwrites the exhaustive result of the same submission."""
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in method)[:40] or "method"
    tag = f"{slug}-{submission_sha256[:10]}-{hashlib.sha256(simulator_key.encode()).hexdigest()[:6]}"
    if cascade is not None and not (spec is not None and spec.simulator.cascade):
        tag += "-" + cascade.tag()
    return tag


def result_path(results_dir: Path, spec: TaskSpec, method: str, submission_sha256: str, simulator_key: str,
                cascade: CascadeSettings | None) -> Path:
    """Where `harness eval` writes the result of this submission on this task: <results>/<task id>/<stem>.json."""
    return Path(results_dir) / spec.id / f"{result_tag(method, submission_sha256, simulator_key, spec, cascade)}.json"


def true_values(test_latents: tuple[np.ndarray, np.ndarray], latents: np.ndarray) -> np.ndarray:
    """[n_test, m] true activation of each scored latent on each test context (0 where not in the TopK)."""
    vals, inds = test_latents
    out = np.zeros((len(vals), len(latents)), np.float32)
    col = {int(j): c for c, j in enumerate(latents)}
    for r, c in zip(*np.nonzero(vals > 0), strict=True):
        if int(inds[r, c]) in col:
            out[r, col[int(inds[r, c])]] = vals[r, c]
    return out


def table_excerpt(table: ActivationTable, latents: np.ndarray, pred_cal: np.ndarray, pred_tst: np.ndarray,
                  weights: np.ndarray | None = None):
    """The activation-table values the quantile map read for this run (both fitted modes), per latent:
    (how many stored per latent, ranks among the latent's sorted non-zero values, values), concatenated
    in `latents` order."""
    from harness.data.table import needed_nonzero_ranks
    from harness.score.calibrate import quantile_levels

    if not table.exact:
        return np.zeros(len(latents), np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    u = np.concatenate([quantile_levels(pred_cal, pred_tst, weights), quantile_levels(pred_tst, pred_tst)])
    ranks, values = [], []
    for col, j in enumerate(latents):
        r = needed_nonzero_ranks(int(table.nz_count[j]), table.n_tokens, u[:, col], table.method)
        ranks.append(r)
        values.append(table.nonzero_values(int(j))[r])
    return (np.array([len(r) for r in ranks], np.int64), np.concatenate(ranks),
            np.concatenate(values).astype(np.float32))


def portable_path(path: str | os.PathLike) -> str:
    """A path as a result may record it: relative to the working folder when under it, else to the home
    folder (`~/...`), else as given.

    Results and pages are shared; the evaluator's own folders (/home/<name>/...) are not theirs to publish.
    A path elsewhere is kept whole: `reproduce` and `verify-result` read the submission from it (a name alone
    would make both ask for --submission on every result scored from a shared or temporary folder).
    """
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            return prefix + str(p.relative_to(base))
        except ValueError:
            pass
    return str(p)


def portable_command(argv: list[str]) -> str:
    """The command line as run, each absolute path argument written as `portable_path` writes it."""
    import shlex

    def arg(a: str) -> str:
        name, eq, val = a.partition("=")
        if eq and val.startswith("/"):
            return f"{name}={portable_path(val)}"
        return portable_path(a) if a.startswith("/") else a

    return " ".join(shlex.quote(arg(a)) for a in argv)


def side_record(task: Record, submission: Record, simulator: Record, prov: Record, warnings: list) -> np.ndarray:
    """The result's identity sections as canonical JSON, stored in the side file (whose sha256 the result
    records): an edited method name, simulator key, task hash, coverage or count then disagrees with it."""
    import json

    from harness.result import to_jsonable

    record = {"task": task.to_dict(), "submission": submission.to_dict(), "simulator": simulator.to_dict(),
              "provenance": prov.to_dict(), "warnings": [w.to_dict() for w in warnings]}
    return np.array(json.dumps(to_jsonable(record), sort_keys=True, ensure_ascii=False, allow_nan=False))


def write_side_file(path: Path, prep: Prepared, latents: np.ndarray, ce: dict[Condition, np.ndarray],
                    subsets: dict[Subset, np.ndarray], arrays: dict[str, np.ndarray]) -> str:
    """Everything `harness verify-result` needs to recompute the result's numbers (docs/protocol.md §7);
    returns its sha256."""
    nz_stored, nz_ranks, nz_values = table_excerpt(prep.table, latents, arrays[SIDE.pred_calibration],
                                                   arrays[SIDE.pred_test], arrays.get(SIDE.calibration_weights))
    every = {SIDE.test_targets: prep.splits["test"][:, -1], **{SIDE.ce(k): v for k, v in prep.ce_base.items()},
             **{SIDE.ce(c.key): v for c, v in ce.items()}, SIDE.latents: latents,
             SIDE.true_test: true_values(prep.test_latents, latents),
             SIDE.table_n_tokens: np.int64(prep.table.n_tokens), SIDE.table_method: np.str_(prep.table.method),
             SIDE.table_nz_count: prep.table.nz_count[latents], SIDE.table_nz_stored: nz_stored,
             SIDE.table_nz_ranks: nz_ranks, SIDE.table_nz_values: nz_values,
             **{SIDE.subset(s.name): S for s, S in subsets.items() if s.rule != "all"},
             SIDE.test_windows: prep.splits["test"].astype(np.int32), **arrays}
    errors = side_layout_errors(every)
    if errors:   # a writer out of step with the description its readers rely on: a bug, caught before writing
        raise RuntimeError(f"side file {path.name}: " + "; ".join(errors))
    save_npz(path, **{str(k): v for k, v in every.items()})
    return sha256_file(path)


def provenance(spec: TaskSpec, command: str, device: Any, selection_scores: str, started: float,
               stats: dict[str, Any]) -> Provenance:
    import torch

    from harness.environment import capture

    return Provenance(
        harness_version=__version__, date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seed=spec.scoring.seed, command=command, python=sys.version.split()[0], torch=torch.__version__,
        transformers=_version("transformers"), platform=platform.platform(), device=str(device),
        overrides=list(spec.overrides), selection_scores=selection_scores,
        wall_seconds=round(time.time() - started, 1), **capture(device), **stats)


def method_notes(spec: TaskSpec, table: ActivationTable) -> Methods:
    """How every number was computed, so a result explains itself (docs/protocol.md §6)."""
    sc = spec.scoring
    rule = ("fire-rate: per latent, the ceil(r*n_cal)-th largest calibration prediction, r = the latent's "
            "firing rate on the activation sample; predicted firing iff prediction >= threshold"
            if sc.detection_rule == "fire-rate" else f"fixed: predicted firing iff prediction >= {sc.detection_threshold:g}")
    return Methods(
        intervals=IntervalMethods(
            level=CI_LEVEL,
            bootstrap=BootstrapMethod(method="percentile", draws=sc.bootstrap, seed=sc.seed,
                                      generator="numpy PCG64(seed).integers(0, n, (draws, n))",
                                      resampled="test contexts, the same resamples for every condition (paired)"),
            recovery="fieller (inverted one-sample t-test on n-1 df; unbounded when the denominator is not "
                     "significantly different from 0)"),
        quantile_estimator=QuantileEstimator(
            numpy_method=table.method, exact=bool(table.exact),
            table=("every non-zero activation of each latent" if table.exact
                   else f"{table.n_quantiles}-point grid of non-zero quantiles")),
        ecdf="mid-rank empirical CDF of the calibration predictions, clipped to their range",
        detection_threshold=DetectionThresholdMethod(rule=sc.detection_rule, description=rule),
    )


def draw_figures(result: Result, out_dir: Path, tag: str, prep: Prepared, latents: np.ndarray,
                 pred_tst: np.ndarray, quantile_values: np.ndarray) -> list[str]:
    from harness.report.plots import (
        plot_activation_distributions,
        plot_partial_rewriting,
        plot_sens_spec_by_bin,
    )

    col = {int(j): c for c, j in enumerate(latents)}
    vals, inds = prep.test_latents
    true = []
    for r in range(len(vals)):
        for v, i in zip(vals[r], inds[r], strict=True):
            if v > 0 and int(i) in col:
                true.append(v)
    paths = [out_dir / f"{tag}.curve.png", out_dir / f"{tag}.distributions.png", out_dir / f"{tag}.sens_spec.png"]
    plot_partial_rewriting(result, paths[0])
    # Non-zero calibrated values only: like-for-like with the true non-zero activations.
    calibrated = quantile_values.ravel()
    plot_activation_distributions(np.asarray(true), pred_tst.ravel(), calibrated[calibrated > 0], paths[1])
    plot_sens_spec_by_bin(result.sens_spec_by_detection_bin, paths[2])
    return [p.name for p in paths]


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "?"
