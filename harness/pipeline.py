"""`harness eval`: open the task → prepare → simulate → score → write the result.

Kept apart as inspect_ai does: the task (what is measured) is `task/` and `data/`, the solver (the
simulator) is `simulate/`, the scorers are `score/`, and `report/` writes what they found. This module only
calls them in order.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.data.prepare import Prepared, prepare
from harness.io import writable_dir
from harness.report.write import (
    draw_figures,
    method_notes,
    portable_path,
    provenance,
    result_tag,
    side_record,
    write_side_file,
)
from harness.result import (
    SIDE,
    CascadeSummary,
    CeMeans,
    ConditionRow,
    DetectionBin,
    Headline,
    PerLatent,
    PredictionWarning,
    Result,
    SideFile,
    SideFiles,
    SimulatorInfo,
    SubmissionInfo,
    TaskRef,
    condition_row,
)
from harness.score.calibrate import CALIBRATION_MODES, calibrate
from harness.score.conditions import (
    ALL,
    PatchedCE,
    Subset,
    choose_subsets,
    condition_rows,
    headline,
    run_conditions,
    simulated,
    zero,
)
from harness.score.degenerate import DegenerateWarning, degenerate_predictions
from harness.score.detection import detection_table, padded, threshold_values
from harness.score.metrics import (
    bin_by_score,
    bootstrap_indices,
    sensitivity_specificity,
)
from harness.simulate.run import Predictions, load_simulator, scored_contexts, simulate_all
from harness.task.cascade import CascadeSettings, task_cascade
from harness.task.inputs import TaskInputs
from harness.task.spec import TaskSpec, load_task
from harness.task.submission import (
    IN_MEMORY,
    Submission,
    load_submission,
    scored_latents,
    submission_from_dict,
)

if TYPE_CHECKING:
    from harness.model.coder import SparseCoder
    from harness.simulate.cascade import CascadePlan


@dataclass
class EvalConfig:
    task: str
    # A file, or (the Python API) a dict shaped like one or a `Submission` built in code: checked alike.
    submission: Path | Mapping[str, Any] | Submission
    backend: str = "auto"
    device: str = "auto"
    results_dir: Path = Path("results")
    overrides: list[str] = field(default_factory=list)
    command: str = ""
    endpoints: list[str] = field(default_factory=list)   # http backend: OpenAI-compatible servers
    served_model: str = ""                               # http backend: the model name the servers serve
    cascade: CascadeSettings | None = None               # None: every (context, latent) pair is simulated


def evaluate(cfg: EvalConfig) -> tuple[Result, Path]:
    started = time.time()
    # --- the task and its inputs, each checked and loaded once
    spec = load_task(cfg.task, cfg.overrides)
    inputs = TaskInputs(spec, cfg.device)
    inputs.check(simulator=True)
    # Before any work: a read-only or misnamed output folder must not cost a whole evaluation.
    out_dir = writable_dir(Path(cfg.results_dir) / spec.id, "results")
    sub = _submission(cfg.submission, spec, inputs.num_latents())
    prep = prepare(spec, inputs=inputs)
    latents, cov = scored_latents(sub, prep.rewritten, sub.path or IN_MEMORY)
    model, tok = inputs.subject()

    # --- simulate
    scored = scored_contexts(prep, tok)   # decoded once, for the cascade's first stage and the simulator
    sim, sim_ref = load_simulator(spec, cfg.backend, inputs.device, model, tok, cfg.endpoints, cfg.served_model,
                                  contexts=scored)
    explanations = [sub.explanations[int(j)] for j in latents]
    plan = None
    cascade = task_cascade(spec, cfg.cascade)
    if cascade is not None:
        from harness.simulate.cascade import plan_for

        plan = plan_for(cascade, prep, scored, explanations, latents)
    pred = simulate_all(prep, tok, sim, explanations, latents, only=plan.mask if plan else None,
                        fill=plan.fill if plan else 0.0, scored=scored)

    choice = getattr(sim, "choice", None)
    pred.stats["engine_choice"] = choice.describe() if choice is not None else f"{cfg.backend} (asked for)"

    # --- score
    s = _score(spec, prep, sub, latents, pred, plan, model, inputs.coder(), inputs.device)

    # --- report
    tag = result_tag(sub.method, sub.sha256, sim_ref.key(), spec, cascade)
    out_dir.mkdir(parents=True, exist_ok=True)
    side = out_dir / f"{tag}.per_context.npz"
    task_ref = TaskRef(id=spec.id, hash=spec.hash)
    sub_info = SubmissionInfo(method=sub.method, description=sub.description, sha256=sub.sha256,
                              path=portable_path(sub.path) if sub.path else "", n_explanations=len(sub.explanations), coverage=cov)
    sim_info = SimulatorInfo(model_key=sim_ref.key(), prompt_version=spec.simulator.prompt_version, backend=sim.name)
    prov = provenance(spec, cfg.command, inputs.device, s.score_source, started, pred.stats)
    result_warnings = [PredictionWarning(**w.to_dict()) for w in s.warnings]
    side_sha = write_side_file(side, prep, latents, s.patched.ce, s.subsets, {
        # The identity fields, copied where the result's sha256 covers them: `verify-result` compares each.
        SIDE.record: side_record(task_ref, sub_info, sim_info, prov, result_warnings),
        SIDE.rewritten: np.asarray(prep.rewritten, dtype=np.int64),
        SIDE.pred_calibration: pred.calibration.astype(np.float32), SIDE.pred_test: pred.test.astype(np.float32),
        SIDE.det_pred_pos: padded(pred.detection_pos), SIDE.det_pred_neg: padded(pred.detection_neg),
        SIDE.detection_threshold: s.det_thr, SIDE.fire_rate: s.fire_rate, SIDE.active_true: s.patched.active_true,
        **{SIDE.active_sim(mode): a for mode, a in s.patched.active_sim.items()},
        **{SIDE.sim_values(mode): v.astype(np.float32) for mode, v in s.sims.items()},
        SIDE.selection_scores: s.sel_scores.astype(np.float64),
        **({SIDE.calibration_weights: s.cal_w} if s.cal_w is not None else {})})
    result = Result(
        task=task_ref,
        submission=sub_info,
        simulator=sim_info,
        provenance=prov,
        headline=s.head,
        ce_means=_ce_means(prep.ce_base, s.patched.ce, s.rows),
        conditions=s.rows,
        per_latent=PerLatent(latent=latents.tolist(), auroc=s.auroc.tolist(), balanced_accuracy=s.bacc.tolist(),
                             sensitivity=s.sens.tolist(), specificity=s.spec.tolist(),
                             score=[float(x) for x in s.sel_scores], detection_threshold=s.det_thr.tolist(),
                             fire_rate=s.fire_rate.tolist()),
        sens_spec_by_detection_bin=s.bins,
        side_files=SideFiles(per_context=SideFile(path=side.name, sha256=side_sha)),
        methods=method_notes(spec, prep.table),
        warnings=result_warnings,
        cascade=s.cascade,
    )
    result.figures = draw_figures(result, out_dir, tag, prep, latents, pred.test, s.sims["quantile"])
    path = out_dir / f"{tag}.json"
    result.to_json(path)
    return result, path


def _submission(given: Path | Mapping[str, Any] | Submission, spec: TaskSpec, num_latents: int) -> Submission:
    chars = spec.simulator.max_explanation_chars
    if isinstance(given, (Mapping, Submission)):
        return submission_from_dict(given, task_id=spec.id, num_latents=num_latents, max_chars=chars)
    return load_submission(given, task_id=spec.id, num_latents=num_latents, max_chars=chars)


@dataclass
class _Scored:
    """What the scorers found, before it is laid out as a result."""
    fire_rate: np.ndarray
    cal_w: np.ndarray | None            # a cascade's calibration weights; None: exhaustive
    det_thr: np.ndarray
    auroc: np.ndarray
    bacc: np.ndarray
    warnings: list[DegenerateWarning]
    sel_scores: np.ndarray
    score_source: str                   # submission | detection-auroc
    sims: dict[str, np.ndarray]         # calibration mode -> simulated latent values on the test split
    cascade: CascadeSummary | None
    subsets: dict[Subset, np.ndarray]
    patched: PatchedCE
    rows: list[ConditionRow]
    sens: np.ndarray
    spec: np.ndarray
    head: Headline
    bins: list[DetectionBin]


def _score(spec: TaskSpec, prep: Prepared, sub: Submission, latents: np.ndarray, pred: Predictions,
           plan: CascadePlan | None, model: Any, coder: SparseCoder, device: Any) -> _Scored:
    """Detection, calibration, the patched conditions and the headline, in the protocol's order."""
    sc = spec.scoring
    fire_rate = prep.table.fire_rate[latents]
    # A cascade's calibration rows are weighted (sampled unselected pairs stand for the unselected); else None.
    cal_w = plan.weights() if plan is not None else None
    det_thr = threshold_values(spec, pred.calibration, fire_rate, cal_w)
    auroc, bacc = detection_table(pred.detection_pos, pred.detection_neg, det_thr)
    warnings = degenerate_predictions(np.vstack([pred.calibration, pred.test]), latents,
                                      spec.simulator.prompt_version)
    if sub.scores and all(int(j) in sub.scores for j in latents):
        sel_scores, score_source = np.asarray([sub.scores[int(j)] for j in latents]), "submission"
    else:
        sel_scores, score_source = np.nan_to_num(auroc, nan=-np.inf), "detection-auroc"
    sims = {mode: calibrate(mode, pred.calibration, pred.test, prep.table, latents, cal_w)
            for mode in CALIBRATION_MODES}
    cascade_section = None
    if plan is not None:
        from harness.simulate.cascade import matter_counts
        from harness.simulate.cascade import summary as cascade_summary

        # What the cascade missed is judged by the exhaustive map's criterion, not its own (whose cut rests on a
        # latent's few real calibration predictions and over-counts ~16x: benchmarks/RESULTS.md, Cascade).
        cascade_section = cascade_summary(plan, pred.calibration, pred.test,
                                          matter_counts(prep.table, latents, plan.n_calibration),
                                          int(pred.stats["n_predictions"]) - int(plan.mask.sum()))
    subsets = choose_subsets(latents, sc.fractions, sel_scores, sc.seed)
    patched = run_conditions(model, coder, spec.coder.hookpoint, spec.coder.kind, prep.splits["test"], latents, sims, subsets, device)
    base = prep.ce_base
    boot = bootstrap_indices(len(base["clean"]), sc.bootstrap, sc.seed)
    rows = condition_rows(patched.ce, subsets, base["clean"], base["coder"], boot)
    sens, spec_ = sensitivity_specificity(patched.active_true, patched.active_sim["quantile"])
    n_auroc = int(np.isfinite(auroc).sum())
    head = headline(rows, patched.ce, base, boot, sens, spec_, auroc, bacc,
                    bootstrap_indices(n_auroc, sc.bootstrap, sc.seed) if n_auroc >= 2 else None, sc.rank_by)
    bins = [DetectionBin(lo=s["lo"], hi=s["hi"], n=s["n"], sensitivity=s["mean"], specificity=p["mean"])
            for s, p in zip(bin_by_score(auroc, sens), bin_by_score(auroc, spec_), strict=True)]
    return _Scored(fire_rate=fire_rate, cal_w=cal_w, det_thr=det_thr, auroc=auroc, bacc=bacc, warnings=warnings,
                   sel_scores=sel_scores, score_source=score_source, sims=sims, cascade=cascade_section,
                   subsets=subsets, patched=patched, rows=rows, sens=sens, spec=spec_, head=head, bins=bins)


def _ce_means(base: dict[str, np.ndarray], ce: dict[Any, np.ndarray], rows: list[ConditionRow]) -> CeMeans:
    zero_output = base["zero_output"]
    return CeMeans(clean=float(base["clean"].mean()), coder=float(base["coder"].mean()),
                   zero_output=float(np.mean(zero_output)) if np.isfinite(zero_output).all() else None,
                   latent_zero=float(ce[zero(ALL)].mean()),
                   simulated=condition_row(rows, simulated("quantile", ALL).key).ce_mean)
