"""`harness reproduce`: re-simulate a seeded sample of a result's stored predictions here, and say whether the
result's numbers would stand.

`verify-result` checks that a result's numbers follow from its side file; this checks that the side file's
predictions follow from the task, the submission and the simulator, in the current environment. A sample of
the stored predictions, stratified over calibration, test and detection pairs, is simulated again with the
task's simulator loaded exactly as `harness eval` loads it, but never through the prediction store (a stored
value would only repeat itself). The fresh values are compared with the stored ones, and substituted for
them to see how far each latent's detection AUROC and the headline (the task's `rank_by` metric) move.

Explanations are not stored in results: the result records the submission's path and the sha256 of its
canonical JSON, which pins every explanation text, so they are read from that file (or `--submission`) and
refused when the hash differs. Storing the texts again in every side file would copy untrusted text into
result artifacts for no gain in trust: the hash already proves which texts were scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.result import SIDE


@dataclass(frozen=True)
class Tolerance:
    """How far a re-simulated prediction may sit from the stored one, in the prompt's score units."""

    max_abs: float    # every sampled |Δ|
    mean_abs: float   # their mean
    basis: str        # the measurement it rests on


# The one place the reproduction tolerance lives (docs/protocol-choices.md, `harness reproduce`). Measured on
# the yn1 log-odds of Qwen2.5-Coder-1.5B in bfloat16: the same pairs in different batch compositions differ
# by up to 0.10 (mean 0.024), and in a fresh environment by up to 0.107 (mean 0.025). The bound is about
# 2.5x the worst measured, so a sample of 64 from an honest re-run passes and a changed model, prompt or
# tokenisation (moves of 0.5 and more) does not. float16 keeps more mantissa bits than bfloat16, so the
# bfloat16 bound is safe for it. In float32 batch composition moves a prediction by a float32 ulp or two
# (docs/protocol-choices.md, Simulation: at most 1e-6 on the 0-9 scale), so 1e-3 leaves room for another
# BLAS or CPU while catching any real change; the mean bound keeps bfloat16's ratio of mean to max.
TOLERANCES: dict[str, Tolerance] = {
    "bfloat16": Tolerance(0.25, 0.06, "bf16 batch compositions: max 0.10 / mean 0.024; fresh environment: "
                                      "max 0.107 / mean 0.025"),
    "float16": Tolerance(0.25, 0.06, "bounded by the bfloat16 tolerance (more mantissa bits)"),
    "float32": Tolerance(1e-3, 2.5e-4, "float32 batch compositions: 1-2 ulps (<= 1e-6)"),
    "float64": Tolerance(1e-3, 2.5e-4, "bounded by the float32 tolerance (more mantissa bits; stored as float32)"),
}
# The headline may move by at most this share of its own 95% CI half-width: a reproduction that moves the
# ranked number by a tenth of its uncertainty cannot change what the leaderboard says about it.
HEADLINE_CI_SHARE = 0.1
DEFAULT_SAMPLE = 64
STRATA = ("calibration", "test", "detection")
_MOVED = 1e-12   # an AUROC or headline change smaller than this is float noise, not a move


def tolerance_for(dtype: str) -> Tolerance:
    if dtype not in TOLERANCES:
        raise HarnessError(f"no reproduction tolerance for simulator dtype {dtype!r}: known "
                           f"{', '.join(TOLERANCES)} (harness/report/reproduce.py TOLERANCES)")
    return TOLERANCES[dtype]


# ---------------------------------------------------------------- the sample (pure)

def allocate(sizes: Sequence[int], n: int) -> list[int]:
    """How many of `n` draws each stratum gets: proportional to its size by largest remainder (ties to the
    earlier stratum), capped at its size, and at least one for every non-empty stratum when n allows."""
    sizes = [int(s) for s in sizes]
    total = sum(sizes)
    if n >= total:
        return sizes
    quota = [n * s / total for s in sizes]
    out = [int(math.floor(q)) for q in quota]
    for i in sorted(range(len(sizes)), key=lambda i: (-(quota[i] - out[i]), i))[: n - sum(out)]:
        out[i] += 1
    nonempty = [i for i, s in enumerate(sizes) if s > 0]
    if n >= len(nonempty):
        for i in nonempty:
            if out[i] == 0:
                # Taken from the stratum with most draws: every kind of pair is looked at at least once.
                out[max(range(len(out)), key=lambda k: (out[k], -k))] -= 1
                out[i] = 1
    return out


def sample_indices(sizes: Sequence[int], n: int, seed: int) -> list[np.ndarray]:
    """Sorted flat indices drawn without replacement in each stratum (numpy PCG64(seed), strata in order)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return [np.sort(rng.choice(s, size=k, replace=False)) if k else np.zeros(0, np.int64)
            for s, k in zip(sizes, allocate(sizes, n), strict=True)]


def simulated_pairs(cal: np.ndarray, tst: np.ndarray, cascade_prompt: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the calibration and test pairs that were simulated: all of them, or for a cascade result
    (`cascade_prompt`: its prompt version) those not holding the fill score the cascade gives unselected pairs."""
    if cascade_prompt is None:
        return np.arange(cal.size), np.arange(tst.size)
    from harness.simulate.cascade import lowest_score

    fill = np.float32(lowest_score(cascade_prompt))
    return np.flatnonzero(cal.reshape(-1) != fill), np.flatnonzero(tst.reshape(-1) != fill)


def detection_order(det_pos: np.ndarray, det_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The side file's detection predictions in the order they were simulated (per latent, positives then
    negatives): (latent column, positive?, slot) per prediction; NaN padding is skipped."""
    lat, positive, slot = [], [], []
    for e in range(det_pos.shape[0]):
        for is_pos, row in ((True, det_pos[e]), (False, det_neg[e])):
            for i in np.flatnonzero(~np.isnan(row)):
                lat.append(e)
                positive.append(is_pos)
                slot.append(int(i))
    return np.asarray(lat, np.int64), np.asarray(positive, bool), np.asarray(slot, np.int64)


# ---------------------------------------------------------------- the comparison (pure)

@dataclass
class SplitDelta:
    split: str
    n: int
    max_abs: float
    mean_abs: float
    n_beyond: int      # |Δ| > the tolerance's max_abs


@dataclass
class LatentMove:
    latent: int
    stored: float
    reproduced: float
    lo: float          # the AUROC range the tolerance allows: sampled values moved by ±max_abs
    hi: float

    @property
    def moved(self) -> bool:
        return abs(self.reproduced - self.stored) > _MOVED

    @property
    def within(self) -> bool:
        return self.lo - _MOVED <= self.reproduced <= self.hi + _MOVED


@dataclass
class Reproduction:
    path: str
    task: str
    method: str
    units: str
    dtype: str
    tolerance: Tolerance
    seed: int
    engine: str
    device: str
    splits: list[SplitDelta]
    latents: list[LatentMove]       # every latent with a defined AUROC
    headline_metric: str
    headline_stored: float
    headline_reproduced: float
    headline_allowed: float | None  # None: the result has no CI to measure the move against
    deltas: list[dict[str, Any]] = field(default_factory=list)   # one per sampled pair, for --format json
    notes: list[str] = field(default_factory=list)

    @property
    def overall(self) -> SplitDelta:
        return self.splits[-1]

    @property
    def headline_move(self) -> float:
        return self.headline_reproduced - self.headline_stored

    def failures(self) -> list[str]:
        """Why the result does not reproduce, one phrase each; empty when it does."""
        t, a = self.tolerance, self.overall
        out = []
        if a.n_beyond:
            out.append(f"{a.n_beyond} of {a.n} predictions moved by more than {t.max_abs:g}")
        if a.mean_abs > t.mean_abs:
            out.append(f"mean |Δ| {a.mean_abs:.4g} > {t.mean_abs:g}")
        outside = [m for m in self.latents if not m.within]
        if outside:
            out.append(f"{len(outside)} per-latent AUROCs outside the tolerance's range")
        hm = self.headline_move
        if not math.isfinite(hm) and math.isfinite(self.headline_stored):
            out.append(f"headline {self.headline_metric} is no longer defined")
        elif self.headline_allowed is not None and abs(hm) > self.headline_allowed:
            out.append(f"headline {self.headline_metric} moved {hm:+.4g} (allowed ±{self.headline_allowed:.4g})")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tolerance"] = asdict(self.tolerance)
        d["latents"] = [{**asdict(m), "moved": m.moved, "within": m.within} for m in self.latents]
        d.update(headline_move=self.headline_move, failures=self.failures(), ok=self.ok)
        return _finite(d)


def _finite(x: Any) -> Any:
    """NaN and ±inf as null: the JSON output must parse everywhere."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def split_deltas(stored: Sequence[np.ndarray], fresh: Sequence[np.ndarray], tol: Tolerance) -> list[SplitDelta]:
    """Per stratum and over all: count, max and mean |fresh − stored| (in float64), and how many exceed tol."""
    out = []
    for name, s, f in [*zip(STRATA, stored, fresh, strict=True),
                       ("all", np.concatenate(list(stored)), np.concatenate(list(fresh)))]:
        d = np.abs(np.asarray(f, np.float64) - np.asarray(s, np.float64))
        d = np.where(np.isnan(d), np.inf, d)   # a NaN on either side is as far as it gets
        out.append(SplitDelta(name, int(d.size), float(d.max()) if d.size else 0.0,
                              float(d.mean()) if d.size else 0.0, int((d > tol.max_abs).sum())))
    return out


def auroc_moves(latents: np.ndarray, det_pos: np.ndarray, det_neg: np.ndarray, new_pos: np.ndarray,
                new_neg: np.ndarray, sampled_pos: np.ndarray, sampled_neg: np.ndarray,
                tol: float) -> list[LatentMove]:
    """Per latent: detection AUROC from the stored predictions, with the re-simulated ones substituted, and
    the range reachable by moving each sampled prediction by at most `tol` (AUROC rises with every positive
    and falls with every negative, so the two extreme shifts bound it)."""
    from harness.score.metrics import detection_scores

    def auroc(p, q):
        return detection_scores(p, q, threshold=0.0)[0]

    shift_p, shift_n = np.where(sampled_pos, tol, 0.0), np.where(sampled_neg, tol, 0.0)
    before, after = auroc(det_pos, det_neg), auroc(new_pos, new_neg)
    lo, hi = auroc(det_pos - shift_p, det_neg + shift_n), auroc(det_pos + shift_p, det_neg - shift_n)
    return [LatentMove(int(j), float(b), float(a), float(lo_), float(hi_))
            for j, b, a, lo_, hi_ in zip(latents, before, after, lo, hi, strict=True) if math.isfinite(b)]


def ci_half_width(interval) -> float | None:
    lo, hi = (None, None) if interval is None else (interval.lo, interval.hi)
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return (hi - lo) / 2


# ---------------------------------------------------------------- loading

@dataclass
class _Inputs:
    loaded: Any            # harness.report.failures.Loaded
    spec: Any              # TaskSpec
    explanations: list[str]
    latents: np.ndarray


def _load(path: str | Path, task: str | None, submission: str | None) -> _Inputs:
    from harness.io import sha256_file
    from harness.report.failures import Loaded
    from harness.result import load_result
    from harness.task.inputs import TaskInputs
    from harness.task.spec import load_task
    from harness.task.submission import load_submission

    p = Path(path)
    res = load_result(p)
    info = res.side_files.per_context
    side_path = p.parent / info.path
    if not info.path or not side_path.is_file():
        raise HarnessError(f"{p}: side file {side_path} not found — it must sit next to {p.name}; "
                           "re-run `harness eval`")
    note = ""
    if sha256_file(side_path) != info.sha256:
        # Still compared: the stored predictions, whoever changed them, are what is being tested.
        note = (f"{side_path.name}: sha256 differs from the one {p.name} records (`harness verify-result` "
                "says what else changed); comparing against its predictions as they are")
    try:
        with np.load(side_path, allow_pickle=False) as z:
            side = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise HarnessError(f"{side_path}: cannot read the side file ({str(e).splitlines()[0][:200]})") from None
    need = (SIDE.latents, SIDE.pred_calibration, SIDE.pred_test, SIDE.det_pred_pos, SIDE.det_pred_neg)
    missing = [k for k in need if k not in side]
    if missing:
        raise HarnessError(f"{side_path}: no {', '.join(missing)} — written by an older harness; re-run "
                           "`harness eval`")
    tid, thash = res.task.id, res.task.hash
    try:
        spec = load_task(task or tid, list(res.provenance.overrides or []))
    except HarnessError as e:
        hint = "" if task else " (a task not registered under tasks/ needs --task FOLDER)"
        raise HarnessError(f"{p}: cannot load its task: {e}{hint}") from None
    if spec.id != tid:
        raise HarnessError(f"--task {task} is task {spec.id!r}, not the result's task {tid!r}")
    if spec.hash != thash:
        raise HarnessError(f"{p}: task {tid} now hashes to {spec.hash[:12]}, the result was scored on "
                           f"{thash[:12]} — reproduce needs the task the result was scored on")
    key, pv = spec.simulator_ref().key(), spec.simulator.prompt_version
    if key != res.simulator.model_key or pv != res.simulator.prompt_version:
        raise HarnessError(f"{p}: scored with simulator {res.simulator.model_key} and prompt "
                           f"{res.simulator.prompt_version}, the task now has {key} and {pv}")
    sub_path = submission or res.submission.path
    if not sub_path or not Path(sub_path).is_file():
        raise HarnessError(f"{p}: the submission it scored ({sub_path or 'no path recorded'}) is not found — "
                           f"pass --submission FILE (sha256 {res.submission.sha256[:12]}…)")
    sub = load_submission(sub_path, task_id=tid, num_latents=TaskInputs(spec).num_latents(),
                          max_chars=spec.simulator.max_explanation_chars)
    if sub.sha256 != res.submission.sha256:
        raise HarnessError(f"{sub_path}: sha256 {sub.sha256[:12]}… is not the {res.submission.sha256[:12]}… the "
                           "result scored — pass the submission file it was scored on (--submission FILE)")
    latents = side[SIDE.latents].astype(np.int64)
    absent = [int(j) for j in latents if int(j) not in sub.explanations]
    if absent:
        raise HarnessError(f"{sub_path}: no explanation for scored latent(s) {absent[:8]}")
    return _Inputs(Loaded(p, res, side, note), spec, [sub.explanations[int(j)] for j in latents], latents)


# ---------------------------------------------------------------- the run

def reproduce(path: str | Path, sample: int = DEFAULT_SAMPLE, seed: int = 0, *, task: str | None = None,
              submission: str | None = None, backend: str | None = None, device: str = "auto",
              endpoints: Sequence[str] = (), served_model: str = "") -> Reproduction:
    """Re-simulate `sample` stored predictions of the result at `path` and compare (module docstring)."""
    from harness.data.prepare import prepare
    from harness.io import progress
    from harness.simulate.prompt import get_template, prompt_score
    from harness.simulate.run import load_simulator, pair_layout
    from harness.task.inputs import TaskInputs

    if sample < 1:
        raise HarnessError(f"--sample must be at least 1, got {sample}")
    inp = _load(path, task, submission)
    spec, side, res = inp.spec, inp.loaded.side, inp.loaded.result
    assert side is not None
    notes = [inp.loaded.side_note] if inp.loaded.side_note else []
    dtype = spec.simulator_ref().dtype
    tol = tolerance_for(dtype)
    cal, tst = side[SIDE.pred_calibration], side[SIDE.pred_test]
    dpos, dneg = side[SIDE.det_pred_pos].astype(np.float32), side[SIDE.det_pred_neg].astype(np.float32)
    m = len(inp.latents)
    d_lat, d_pos, d_slot = detection_order(dpos, dneg)
    # Drawn before any model loads, from the side file alone: the same seed picks the same pairs anywhere. A
    # cascade result's unsimulated pairs hold the prompt's lowest score, which re-simulation would not give:
    # only its simulated pairs are drawn (a real prediction at exactly that score is never drawn either).
    cal_ok, tst_ok = simulated_pairs(cal, tst, spec.simulator.prompt_version if res.cascade else None)
    picks = sample_indices((len(cal_ok), len(tst_ok), len(d_lat)), sample, seed)
    picks = [cal_ok[picks[0]], tst_ok[picks[1]], picks[2]]

    inputs = TaskInputs(spec, device)
    inputs.check(simulator=True)
    prep = prepare(spec, inputs=inputs)
    if SIDE.test_windows in side and not np.array_equal(prep.splits["test"], side[SIDE.test_windows]):
        raise HarnessError(f"{path}: the task's test contexts here differ from the ones the result was scored on")
    unknown = sorted(set(inp.latents.tolist()) - set(int(j) for j in prep.rewritten))
    if unknown:
        raise HarnessError(f"{path}: latents {unknown[:8]} are not rewritten by task {spec.id} here")
    model, tok = inputs.subject()
    engine = backend or _engine_of(res.simulator.backend)
    sim, _ = load_simulator(spec, engine, inputs.device, model, tok, list(endpoints), served_model)
    lay = pair_layout(prep, tok, inp.latents)
    if not (np.array_equal(lay.det_latent, d_lat) and np.array_equal(lay.det_positive, d_pos)
            and np.array_equal(lay.det_slot, d_slot)):
        raise HarnessError(f"{path}: the task's detection examples here differ from the side file's")

    ci, ti, di = picks
    pairs = np.concatenate([lay.pairs[ci], lay.pairs[lay.n_cal * m + ti], lay.det_pairs[di]]).reshape(-1, 2)
    with progress() as prog:
        # The simulator itself, never CachedSimulator: a value read back from the store proves nothing.
        t = prog.add_task(f"re-simulating ({sim.name})", total=len(pairs))
        probs, _mass = sim.predict(lay.contexts, inp.explanations, pairs, progress=lambda n: prog.advance(t, n))
    fresh = prompt_score(sim.prompt_version, probs).astype(np.float32)
    f_cal, f_tst, f_det = np.split(fresh, [len(ci), len(ci) + len(ti)])
    s_cal, s_tst = cal.reshape(-1)[ci], tst.reshape(-1)[ti]
    s_det = np.where(d_pos[di], dpos[d_lat[di], d_slot[di]], dneg[d_lat[di], d_slot[di]])
    splits = split_deltas((s_cal, s_tst, s_det), (f_cal, f_tst, f_det), tol)

    new_pos, new_neg = dpos.copy(), dneg.copy()
    sampled_pos, sampled_neg = np.zeros(dpos.shape, bool), np.zeros(dneg.shape, bool)
    for k, i in enumerate(di):
        grid, mark = (new_pos, sampled_pos) if d_pos[i] else (new_neg, sampled_neg)
        grid[d_lat[i], d_slot[i]] = f_det[k]
        mark[d_lat[i], d_slot[i]] = True
    moves = auroc_moves(inp.latents, dpos, dneg, new_pos, new_neg, sampled_pos, sampled_neg, tol.max_abs)

    new_cal, new_tst = cal.copy(), tst.copy()
    new_cal.reshape(-1)[ci] = f_cal
    new_tst.reshape(-1)[ti] = f_tst
    metric = res.headline.rank_by
    if metric == "detection_auroc":
        from harness.score.metrics import detection_scores, macro

        h_stored = macro(detection_scores(dpos, dneg, 0.0)[0])
        h_new = macro(detection_scores(new_pos, new_neg, 0.0)[0])
        interval = res.headline.detection_auroc_ci
        h_result = res.headline.detection_auroc
    else:
        h_stored = float(np.mean(side[SIDE.ce_simulated_all] - side[SIDE.ce_latent_zero_all]))
        # A cascade's calibration rows are weighted as eval weighted them (the side file keeps the weights).
        h_new = _patched_sim_minus_zero(spec, inputs, prep, model, inp.latents, new_cal, new_tst,
                                        side.get(SIDE.calibration_weights))
        interval = res.headline.sim_minus_zero_mean
        h_result = interval.value
    if h_result is not None and math.isfinite(h_stored) and abs(h_stored - h_result) > 1e-9 * max(1, abs(h_result)):
        notes.append(f"the side file's predictions give {metric} {h_stored:.6g}, the result says {h_result:.6g} — "
                     "run `harness verify-result`")
    half = ci_half_width(interval)
    if half is None:
        notes.append(f"the result has no CI for {metric}: its move is reported, not judged")
    deltas = [dict(split=s, index=int(i), stored=float(a), reproduced=float(b))
              for s, idx, st, fr in zip(STRATA, picks, (s_cal, s_tst, s_det), (f_cal, f_tst, f_det), strict=True)
              for i, a, b in zip(idx, st, fr, strict=True)]
    return Reproduction(
        path=str(path), task=spec.id, method=res.submission.method, units=get_template(spec.simulator.prompt_version).score,
        dtype=dtype, tolerance=tol, seed=seed, engine=sim.name, device=str(inputs.device), splits=splits,
        latents=moves, headline_metric=metric, headline_stored=h_stored, headline_reproduced=h_new,
        headline_allowed=None if half is None else HEADLINE_CI_SHARE * half, deltas=deltas, notes=notes)


def _engine_of(recorded: str) -> str:
    """The `--backend` name of the engine a result records (`transformers-prefix` → prefix)."""
    return {"transformers-prefix": "prefix", "transformers-plain": "plain", "vllm": "vllm",
            "http": "http"}.get(recorded, "auto")


def _patched_sim_minus_zero(spec, inputs, prep, model, latents, pred_cal, pred_test, cal_weights=None) -> float:
    """sim_minus_zero as eval computes it: quantile-calibrate, patch the full rewritten set, mean CE difference."""
    from harness.score.calibrate import calibrate
    from harness.score.conditions import ALL, run_conditions, simulated, zero

    sims = {"quantile": calibrate("quantile", pred_cal, pred_test, prep.table, latents, cal_weights)}
    patched = run_conditions(model, inputs.coder(), spec.coder.hookpoint, spec.coder.kind, prep.splits["test"],
                             latents, sims, {ALL: latents}, inputs.device)
    return float(np.mean(patched.ce[simulated("quantile", ALL)] - patched.ce[zero(ALL)]))


# ---------------------------------------------------------------- terminal

def print_reproduction(rep: Reproduction, console, fmt: str = "auto") -> None:
    from rich.text import Text

    from harness.terminal import Column, print_table

    def say(line: str, whole: bool = False) -> None:
        # Prose folds at the console's width (80 when piped); a line naming a file is kept whole to be copied.
        console.print(Text(line), soft_wrap=whole, highlight=False)

    t = rep.tolerance
    rows = [[s.split, str(s.n), _g(s.max_abs), _g(s.mean_abs), str(s.n_beyond)] for s in rep.splits]
    print_table(console, (Column("pairs", key=True), Column("n", numeric=True), Column("max abs Δ", numeric=True),
                          Column("mean abs Δ", numeric=True), Column(f"> {t.max_abs:g}", numeric=True)), rows,
                title=f"{rep.task} · {rep.method}: re-simulated vs stored ({rep.units}, {rep.engine}, {rep.dtype})",
                fmt=fmt)
    # Plain lines, not table captions: a caption is centred and folded at the table's width.
    say(f"tolerance ({rep.dtype}): max |Δ| <= {t.max_abs:g}, mean |Δ| <= {t.mean_abs:g} (seed {rep.seed})")
    moved = [mv for mv in rep.latents if mv.moved]
    hrow = [f"headline {rep.headline_metric}", _g(rep.headline_stored), _g(rep.headline_reproduced),
            _g(rep.headline_move, signed=True),
            "n/a" if rep.headline_allowed is None else f"±{rep.headline_allowed:.2g}"]
    lrows = [[f"AUROC latent {mv.latent}", _g(mv.stored), _g(mv.reproduced), _g(mv.reproduced - mv.stored, True),
              f"{mv.lo:.3f}..{mv.hi:.3f}"] for mv in moved]
    print_table(console, (Column("metric", key=True), Column("stored", numeric=True), Column("reproduced", numeric=True),
                          Column("Δ", numeric=True), Column("allowed", numeric=True)), [hrow, *lrows],
                title="with the re-simulated values substituted", fmt=fmt)
    say(f"{len(moved)} of {len(rep.latents)} per-latent detection AUROCs moved. allowed: for a latent, the range "
        f"its sampled predictions reach within ±{t.max_abs:g}; for the headline, {HEADLINE_CI_SHARE:g} x its 95% "
        "CI half-width")
    for n in rep.notes:
        say(f"note: {n}", whole=True)
    fails = rep.failures()
    say("reproduced: every move inside the tolerance" if not fails else "NOT reproduced: " + "; ".join(fails))


def _g(x: float, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:+.4g}" if signed else f"{x:.4g}"
