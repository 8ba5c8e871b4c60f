"""Per-latent failure reports: the test contexts where the simulator fired and the latent did not, and the reverse.

Everything comes from a result file and its per-context side file (``true_test``, ``pred_test`` and, in
results written since they were added, ``test_windows`` and ``sim_values__quantile``); nothing is re-scored,
so a report cannot disagree with the numbers the result file holds. The text of a context is decoded
with the subject's tokenizer exactly as the simulator saw it: the prefix and the scored (last) token
decoded separately.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.io import one_line, sha256_file
from harness.result import SIDE, DamagedSideFile, Result, load_result, read_side_file
from harness.terminal import console as safe_console

TOP_N = 5

# Keys issue 11 may add for the simulated active mask after TopK (the mask sensitivity/specificity are computed
# from). When one is present it decides "the simulator fired"; otherwise the calibrated value > 0 does.
_SIM_MASK_KEYS = (SIDE.active_sim("quantile"),)   # after TopK: what sensitivity/specificity count


@dataclass
class Case:
    row: int                     # index of the test context
    true: float
    pred: float                  # raw simulator score (any real scale: digit expectation, log-odds, ...)
    sim: float | None            # quantile-calibrated value, when the side file holds it
    prefix: str | None = None    # decoded context before the scored token
    token: str | None = None     # the scored token
    target: str | None = None    # the next token (whose CE is measured)


@dataclass
class LatentReport:
    latent: int
    explanation: str | None
    explanation_note: str
    auroc: float
    balanced_accuracy: float
    sensitivity: float
    specificity: float
    n_test: int
    n_true_active: int
    n_sim_active: int | None
    fired_rule: str
    false_positives: list[Case] = field(default_factory=list)
    false_negatives: list[Case] = field(default_factory=list)
    text_note: str = ""


@dataclass
class Loaded:
    """A result file with its side file, read once."""

    path: Path
    result: Result
    side: dict[str, np.ndarray] | None
    side_note: str = ""
    damaged: bool = False   # the side file is there but cannot be read whole

    @property
    def latents(self) -> list[int]:
        return [int(j) for j in self.result.per_latent.latent]


def load_with_side(path: str | os.PathLike, *, require_side: bool = True) -> Loaded:
    p = Path(path)
    res = load_result(p)
    info = res.side_files.per_context
    if not info.path:
        note = f"{p}: the result names no per-context side file — re-run `harness eval`"
        if require_side:
            raise HarnessError(note)
        return Loaded(p, res, None, note)
    side_path = p.parent / info.path
    note, damaged = "", False
    side: dict[str, np.ndarray] | None = None
    if not side_path.is_file():
        note = f"{side_path}: side file not found — it must sit next to {p.name}; re-run `harness eval`"
    else:
        try:
            side = read_side_file(side_path)
        except DamagedSideFile as e:
            note, damaged = str(e), True
        if side is not None and info.sha256 and sha256_file(side_path) != info.sha256:
            # A side file from another run would produce contexts that disagree with the result's numbers.
            note = f"{side_path}: sha256 differs from the one {p.name} records — the side file belongs to another run"
    if note or side is None:
        if require_side:
            raise HarnessError(note)
        return Loaded(p, res, None, note, damaged)
    for k in (SIDE.latents, SIDE.true_test, SIDE.pred_test):
        if k not in side:
            note = f"{side_path}: no {k!r} array — written by an older harness; re-run `harness eval`"
            if require_side:
                raise HarnessError(note)
            return Loaded(p, res, None, note)
    return Loaded(p, res, side)


# ---------------------------------------------------------------- text of the test contexts

Decoder = Callable[[list[int]], str]


def load_decoder(spec) -> tuple[Decoder | None, str]:
    """The subject's tokenizer's decode (tokenizer only, never the model), or None and the reason."""
    from harness.io import cache_root
    from harness.model.load import load_tokenizer, resolve_source_folder

    try:
        ref = spec.subject_ref()
        tok = load_tokenizer(ref, resolve_source_folder(ref, spec.folder, cache_root()))
    except HarnessError as e:
        return None, str(e)
    except (OSError, ValueError) as e:
        return None, f"cannot load the tokenizer of {spec.id}: {str(e).splitlines()[0][:200]}"
    return (lambda ids: tok.decode([int(i) for i in ids])), ""


def test_windows(loaded: Loaded, spec=None) -> tuple[np.ndarray | None, str]:
    """[n_test, T+1] token ids of the test split: from the side file, else rebuilt for older side files.

    Side files written before ``test_windows`` existed fall back to the task's cached splits (same task
    hash) or, for a pre-tokenised corpus, to the splits rebuilt from it — no model involved. Either is used
    only if its scored targets equal the ``test_targets`` the side file recorded.
    """
    side = loaded.side or {}
    if SIDE.test_windows in side:
        return side[SIDE.test_windows], ""
    from harness.io import cache_root

    tid, thash = loaded.result.task.id, loaded.result.task.hash
    f = cache_root() / "tasks" / f"{tid}-{thash[:12]}" / "splits.npz"
    win = None
    if f.is_file():
        with np.load(f, allow_pickle=False) as z:
            win = z["test"] if "test" in z.files else None
    elif spec is not None and spec.hash == thash and spec.corpus.source == "local-tokens":
        from harness.data.corpus import load_token_stream
        from harness.data.select import make_splits

        try:
            win = make_splits(load_token_stream(spec, None, 0, f.parent), spec)["test"]
        except HarnessError:
            win = None
    if win is None:
        return None, ("the side file predates test_windows and the task's splits are not cached — "
                      "re-run `harness eval` to see the text")
    tt = side.get(SIDE.test_targets)
    if tt is None or len(win) != len(tt) or not np.array_equal(win[:, -1], tt):
        return None, "the task's test split does not match the side file's targets — re-run `harness eval`"
    return win, ""


# ---------------------------------------------------------------- explanations

def explanations_of(res: Result, spec=None) -> tuple[dict[int, str] | None, str]:
    """The submission's explanations, read from the path the result records and checked against its sha256.

    Result files do not hold explanation texts; the submission's sha256 does pin them, so a changed or
    replaced submission file is refused rather than shown next to numbers it did not produce.
    """
    from harness.task.inputs import TaskInputs
    from harness.task.submission import load_submission

    sub = res.submission
    raw = sub.path
    if not raw:
        return None, "the result records no submission path"
    p = Path(raw)
    if not p.is_file():
        return None, f"submission file {raw} not found (explanations are read from it)"
    try:
        s = load_submission(p, task_id=res.task.id,
                            num_latents=TaskInputs(spec).num_latents() if spec is not None else 1 << 31,
                            max_chars=spec.simulator.max_explanation_chars if spec is not None else 1 << 31)
    except HarnessError as e:
        return None, str(e)
    if s.sha256 != sub.sha256:
        return None, f"{p}: changed since the result was written (sha256 differs) — explanations not shown"
    return s.explanations, ""


def task_spec(task_id: str, task: str | None = None):
    """The spec of a result's task (a registered id, or the folder passed as --task), or None and why."""
    from harness.task.spec import load_task

    try:
        spec = load_task(task or task_id)
    except HarnessError as e:
        return None, str(e)
    if spec.id != task_id:
        return None, f"--task {task} is task {spec.id!r}, not the result's task {task_id!r}"
    return spec, ""


# ---------------------------------------------------------------- the report

def _f(x) -> float:
    try:
        return math.nan if x is None else float(x)
    except (TypeError, ValueError):
        return math.nan


def _sim_mask(side: dict[str, np.ndarray], col: int) -> tuple[np.ndarray | None, str]:
    for k in _SIM_MASK_KEYS:
        if k in side and side[k].ndim == 2:
            return side[k][:, col].astype(bool), "active in the patched TopK code (side file mask)"
    if SIDE.sim_values("quantile") in side:
        # Before TopK re-sparsification: the per-latent sensitivity/specificity (after TopK) can differ slightly.
        return side[SIDE.sim_values("quantile")][:, col] > 0, ("quantile-calibrated prediction > 0 (before TopK; "
                                                       "sensitivity/specificity count the patched TopK code)")
    return None, ""


def latent_report(loaded: Loaded, latent: int, *, explanations: dict[int, str] | None = None,
                  explanation_note: str = "", windows: np.ndarray | None = None,
                  decode: Decoder | None = None, text_note: str = "", n: int = TOP_N) -> LatentReport:
    res, side = loaded.result, loaded.side
    lats = loaded.latents
    if latent not in lats:
        shown = ", ".join(map(str, lats[:12])) + (", ..." if len(lats) > 12 else "")
        raise HarnessError(f"{loaded.path}: latent {latent} is not scored in this result (scored: {shown})")
    if side is None:
        raise HarnessError(loaded.side_note)
    i = lats.index(latent)
    side_lats = [int(j) for j in side[SIDE.latents]]
    if latent not in side_lats:
        raise HarnessError(f"{loaded.path}: latent {latent} is missing from the side file — re-run `harness eval`")
    col = side_lats.index(latent)
    true = side[SIDE.true_test][:, col].astype(float)
    pred = side[SIDE.pred_test][:, col].astype(float)
    sim = side[SIDE.sim_values("quantile")][:, col].astype(float) if SIDE.sim_values("quantile") in side else None
    fired, rule = _sim_mask(side, col)
    active = true > 0
    if fired is not None:
        # FP: the simulator fired where the latent did not, most confident first; FN: the latent fired and the
        # simulator did not, strongest true activation first (the misses that cost most CE).
        fp = np.flatnonzero(fired & ~active)
        fp = fp[np.lexsort((fp, -pred[fp]))]
        fn = np.flatnonzero(~fired & active)
        fn = fn[np.lexsort((fn, -true[fn]))]
    else:
        # No calibrated values: rank by the raw score alone (no threshold to say "fired" exists).
        rule = "no calibrated predictions in the side file: ranked by raw score"
        fp = np.flatnonzero(~active)
        fp = fp[np.lexsort((fp, -pred[fp]))]
        fn = np.flatnonzero(active)
        fn = fn[np.lexsort((fn, pred[fn]))]

    def case(r: int) -> Case:
        c = Case(int(r), float(true[r]), float(pred[r]), None if sim is None else float(sim[r]))
        if windows is not None and decode is not None:
            T = windows.shape[1] - 1
            ids = windows[r]
            c.prefix, c.token, c.target = decode(ids[: T - 1]), decode(ids[T - 1: T]), decode(ids[T:])
        return c

    pl = res.per_latent
    expl = None if explanations is None else explanations.get(latent)
    if explanations is not None and expl is None:
        explanation_note = explanation_note or "the submission has no explanation for this latent"
    return LatentReport(
        latent=latent, explanation=expl, explanation_note=explanation_note,
        auroc=_f(at_latent(pl.auroc, i)), balanced_accuracy=_f(at_latent(pl.balanced_accuracy, i)),
        sensitivity=_f(at_latent(pl.sensitivity, i)), specificity=_f(at_latent(pl.specificity, i)),
        n_test=len(true), n_true_active=int(active.sum()),
        n_sim_active=None if fired is None else int(fired.sum()), fired_rule=rule,
        false_positives=[case(r) for r in fp[:n]], false_negatives=[case(r) for r in fn[:n]],
        text_note="" if (windows is not None and decode is not None) else text_note,
    )


def case_titles(rep: LatentReport) -> tuple[str, str]:
    """What the two lists hold, in words, for the rule the report could apply."""
    if rep.n_sim_active is None:
        return ("latent silent, highest simulator scores first", "latent fired, lowest simulator scores first")
    return ("simulator fired, latent did not (highest score first)",
            "latent fired, simulator did not (strongest activation first)")


def at_latent(values: list[float], i: int) -> float | None:
    return values[i] if i < len(values) else None   # a per-latent list shorter than the latents: n/a


def failure_counts(loaded: Loaded) -> dict[int, tuple[int, int]] | None:
    """latent → (#false positives, #false negatives) over the test contexts, when a fired rule exists."""
    side = loaded.side
    if side is None:
        return None
    out = {}
    for col, j in enumerate(int(x) for x in side[SIDE.latents]):
        fired, _ = _sim_mask(side, col)
        if fired is None:
            return None
        active = side[SIDE.true_test][:, col] > 0
        out[j] = (int((fired & ~active).sum()), int((~fired & active).sum()))
    return out


# ---------------------------------------------------------------- terminal

def _num(x: float | None, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def print_report(rep: LatentReport, loaded: Loaded, console=None) -> None:
    from rich.table import Table
    from rich.text import Text

    console = console or safe_console()
    res = loaded.result
    # Text objects, never markup strings: a method name or explanation holding "[red]" must print as typed.
    console.print(Text(f"{one_line(res.task.id)} · {one_line(res.submission.method)} · "
                       f"latent {rep.latent}", style="bold"))
    console.print(Text("explanation: ") + (Text(repr(rep.explanation)) if rep.explanation is not None
                                           else Text(f"unavailable ({rep.explanation_note})", style="dim")))
    console.print(Text(f"detection AUROC {_num(rep.auroc, 2)} · sensitivity {_num(rep.sensitivity, 2)} · "
                       f"specificity {_num(rep.specificity, 2)} · active on {rep.n_true_active}/{rep.n_test} test "
                       f"contexts, simulator {'n/a' if rep.n_sim_active is None else rep.n_sim_active}"))
    console.print(Text(f"simulator fired = {rep.fired_rule}", style="dim"))
    if rep.text_note:
        console.print(Text(f"context text unavailable: {rep.text_note}", style="yellow"))
    fp_t, fn_t = case_titles(rep)
    for title, cases in ((f"false positives: {fp_t}", rep.false_positives),
                         (f"false negatives: {fn_t}", rep.false_negatives)):
        t = Table(title=title, title_justify="left", expand=False, pad_edge=False)
        t.add_column("ctx", justify="right", no_wrap=True)
        t.add_column("true", justify="right", no_wrap=True)
        t.add_column("sim", justify="right", no_wrap=True)
        t.add_column("raw", justify="right", no_wrap=True)
        t.add_column(Text("context … [scored token]"), overflow="fold", ratio=1)
        for c in cases:
            t.add_row(str(c.row), _num(c.true, 2), _num(c.sim, 2), _num(c.pred, 2), _context_text(c))
        if not cases:
            t.add_row("—", "", "", "", Text("none", style="dim"))
        console.print(t)


def _context_text(c: Case, tail: int = 90):
    from rich.text import Text

    if c.prefix is None or c.token is None:  # set together
        return Text("(text unavailable)", style="dim")
    prefix = c.prefix.replace("\n", "⏎")
    if len(prefix) > tail:
        prefix = "…" + prefix[-tail:]
    t = Text(prefix)
    t.append(f"[{c.token.replace(chr(10), '⏎')}]", style="bold reverse")
    return t
