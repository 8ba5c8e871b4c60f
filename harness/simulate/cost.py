"""`harness estimate`: how many simulator predictions a task costs and how long that takes, before running.

Counts come from the task spec alone (so they work offline, even for hub tasks); time comes from the
throughput that `benchmarks/simulate.py` measured and recorded in `harness/simulate/throughput.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.environment import cpu_description
from harness.errors import HarnessError
from harness.simulate.cascade import expected_predictions
from harness.task.cascade import CascadeSettings, task_cascade
from harness.task.spec import TaskSpec, load_task
from harness.terminal import Column, print_table
from harness.terminal import console as safe_console

# Package data (not a repo path), so a wheel install can estimate too.
THROUGHPUT_FILE = Path(__file__).resolve().parent / "throughput.json"


@dataclass
class Cost:
    latents: int
    calibration: int
    test: int
    detection: int

    @property
    def total(self) -> int:
        return self.calibration + self.test + self.detection


def rewritten_count(spec: TaskSpec) -> int:
    lat = spec.latents
    if lat.rewritten == "rule":
        return lat.count
    if lat.rewritten != "all":
        return len(lat.rewritten)
    from harness.task.inputs import TaskInputs

    return TaskInputs(spec).num_latents()


def prediction_cost(spec: TaskSpec) -> Cost:
    m = rewritten_count(spec)
    c = spec.contexts
    return Cost(m, m * c.calibration, m * c.test, m * (c.detection_positive + c.detection_negative))


def load_throughputs(path: Path | None = None) -> list[dict]:
    path = path or THROUGHPUT_FILE
    if not path.is_file():
        return []
    return json.loads(path.read_text()).get("measurements", [])


def calibration_floor_cost(spec: TaskSpec, m: int) -> tuple[int, bool]:
    """(predictions the cascade's calibration floor adds, whether that count is exact).

    The floor is sum_j min(ceil(r_j n_cal) + 1, n_cal) over rewritten latents (`cascade.calibration_floor`).
    Exact where this task's activation sample is already prepared (the rewritten set is chosen from it as
    `prepare` chooses it); otherwise a bound: firing rates sum to at most k (TopK keeps k latents per token),
    so at most n_cal k + 2m. Pairs the floor shares with the per-context top are counted twice, which keeps
    the estimate on the high side."""
    from harness.simulate.cascade import calibration_floor
    from harness.task.spec import task_cache_dir

    n_cal = spec.contexts.calibration
    cache = task_cache_dir(spec)
    if (cache / "activation_table.npz").is_file() and (cache / "latent_stats.npz").is_file():
        from harness.data.select import choose_rewritten
        from harness.data.table import ActivationTable
        from harness.io import load_npz

        try:
            table = ActivationTable.load(cache / "activation_table.npz")
            chosen = choose_rewritten(spec, table, len(table.fire_rate), load_npz(cache / "latent_stats.npz"))
        except (OSError, ValueError, KeyError, HarnessError):
            chosen = None   # a damaged cache: prepare rebuilds it; the bound stands meanwhile
        if chosen is not None and len(chosen) == m:
            return int(calibration_floor(table.fire_rate[chosen], n_cal).sum()), True
    return min(n_cal * spec.coder.k + 2 * m, n_cal * m), False


def cascade_cost(spec: TaskSpec, cascade: CascadeSettings) -> tuple[Cost, bool]:
    """Expected predictions under a cascade: calibration and test contexts see top + sample x rest latents each,
    calibration adds its floor; detection is simulated in full (harness/simulate/cascade.py). With whether the
    floor is exact (else an upper bound)."""
    m, c = rewritten_count(spec), spec.contexts
    full = prediction_cost(spec)
    floor, exact = calibration_floor_cost(spec, m)
    return Cost(m, min(round(expected_predictions(c.calibration, m, cascade)) + floor, full.calibration),
                round(expected_predictions(c.test, m, cascade)), full.detection), exact


def submission_cascade_cost(spec: TaskSpec, cascade: CascadeSettings, submission: str) -> Cost:
    """The cascade's predictions for one submission, counted by running its first stage as `harness eval` does
    (the ranker reads the explanations, so overlaps between the per-context top and the calibration floor are
    known only then). Prepares the task first if its cache lacks a step (minutes: the subject runs over every
    split)."""

    from harness.data.prepare import prepare
    from harness.simulate.cascade import plan_for
    from harness.simulate.run import pair_layout, scored_contexts
    from harness.task.inputs import TaskInputs
    from harness.task.submission import load_submission, scored_latents

    inputs = TaskInputs(spec)
    sub = load_submission(submission, task_id=spec.id, num_latents=inputs.num_latents(),
                          max_chars=spec.simulator.max_explanation_chars)
    prep = prepare(spec, inputs=inputs)
    latents, _ = scored_latents(sub, prep.rewritten, submission)
    tok = inputs.subject()[1]
    ctxs = scored_contexts(prep, tok)
    plan = plan_for(cascade, prep, ctxs, [sub.explanations[int(j)] for j in latents], latents)
    lay = pair_layout(prep, tok, latents, plan.mask, ctxs)
    n_cal = lay.n_cal
    return Cost(len(latents), int(plan.mask[:n_cal].sum()), int(plan.mask[n_cal:].sum()), len(lay.det_pairs))


def corpus_shortfall(spec: TaskSpec) -> str | None:
    """Why the corpus cannot supply the task's splits, where that is known offline (a local token file), or
    None. The same arithmetic `prepare` refuses with later (`data.select.make_splits`), said before anything runs."""
    import numpy as np

    from harness.data.select import split_sizes

    c = spec.corpus
    if c.source != "local-tokens":
        return None
    path = spec.resolve(c.path)
    try:
        with np.load(path) as z:
            n_tokens = max(int(z["tokens"].shape[0]) - c.offset, 0)
    except (OSError, KeyError, ValueError, IndexError):
        return None   # prepare names a missing or malformed file in its own words
    sizes = split_sizes(spec)
    blocks, need = n_tokens // (spec.contexts.T + 1), sum(sizes.values())
    if blocks >= need:
        return None
    return (f"the corpus supplies {blocks:,} blocks of T+1 = {spec.contexts.T + 1} tokens and the splits need "
            f"{need:,} ({', '.join(f'{k} {v:,}' for k, v in sizes.items())}): `harness prepare` will refuse this "
            "task; shrink the split sizes or use a larger corpus")


def print_estimate(task: str, backend: str = "auto", overrides=(), console=None,
                   cascade: CascadeSettings | None = None, submission: str | None = None) -> Cost:
    spec = load_task(task, list(overrides))
    cascade = task_cascade(spec, cascade)   # a task that fixes its cascade is estimated with it
    cost = prediction_cost(spec)
    console = console or safe_console()
    costs = {"exhaustive": cost}
    exact = True
    cas: Cost | None = None
    if cascade is not None and submission:
        cas = submission_cascade_cost(spec, cascade, submission)
    elif cascade is not None:
        cas, exact = cascade_cost(spec, cascade)
    if cascade is not None and cas is not None:
        costs[f"cascade (top {cascade.top}, sample {cascade.sample:g})"] = cas
    counts = [[split, *(f"{getattr(c, split):,}" for c in costs.values())]
              for split in ("calibration", "test", "detection", "total")]
    print_table(console, (Column("split"), *(Column(n, numeric=True) for n in costs)), counts,
                title=f"{spec.id} ({spec.hash[:12]}): simulator predictions ({cost.latents:,} latents)")
    if cas is not None:
        if submission:
            console.print(f"the cascade makes {cost.total / max(cas.total, 1):.1f}x fewer "
                          f"predictions (counted exactly for {submission}, as its eval will select them)")
        else:
            how = ("the calibration floor counted from the prepared activation sample" if exact else
                   "an upper bound on the calibration floor: run `harness prepare` for the exact count")
            console.print(f"the cascade makes {cost.total / max(cas.total, 1):.1f}x fewer "
                          f"predictions (expected: its random sample varies; {how}; --submission counts them "
                          "exactly)")
    from harness.io import cache_root
    from harness.simulate.choice import LOCAL_THROUGHPUT_FILE

    # The committed rows, and this machine's own from `--backend auto`'s measurements (harness/simulate/choice.py).
    rows = [m for m in load_throughputs() + load_throughputs(cache_root() / LOCAL_THROUGHPUT_FILE)
            if backend in ("auto", m["backend"])]
    if not rows:
        raise HarnessError(f"no measured throughput for backend {backend!r} in {THROUGHPUT_FILE}: "
                           "run `python benchmarks/simulate.py` to measure it")
    # Each split is priced at its own pairs per context: detection contexts hold one pair each and pay their
    # whole context prompt, calibration and test share it among m pairs (exhaustive) or a cascade's few.
    c = spec.contexts
    shapes = {name: split_shapes(cost_, cost_ is cost, c.calibration, c.test) for name, cost_ in costs.items()}
    # Throughput depends on the CPU's vector units far more than on its clock (bf16 is 5x slower than float32
    # where the CPU has no native bf16), so each row names its CPU and rows measured on this one are marked.
    here = cpu_description()
    engines = sorted(fit_throughputs(rows), key=lambda t: (t.cpu != here, t.seconds(shapes["exhaustive"])))
    cols = (Column("backend", key=True), Column("model", key=True), Column("device"), Column("CPU"),
            Column("measured (pairs/context: per s)"),
            *(Column(f"time, {n}", numeric=True) for n in costs))
    cells = [[t.backend, t.model, t.device, ("* " if t.cpu == here else "") + short_cpu(t.cpu), t.measured_text(),
              *(_hms(t.seconds(shapes[n])) for n in costs)] for t in engines]
    print_table(console, cols, cells, title="projected simulation time at measured throughputs")
    if not any(t.cpu == here for t in engines):
        console.print(f"No throughput was measured on this CPU ({here}): the times above are other machines'. "
                      "`python benchmarks/simulate.py` measures it.")
    else:
        console.print(f"* measured on this CPU ({here})")
    if backend == "auto":
        console.print(auto_engine_line(spec), highlight=False)
    per = {n: ", ".join(f"{s} {k:.3g}" for s, (_, k) in zip(("calibration", "test", "detection"), sh, strict=True))
           for n, sh in shapes.items()}
    console.print("Pairs per context priced: " + "; ".join(f"{n}: {v}" for n, v in per.items()) + ". A sharing "
                  "engine computes a context's prompt once for its pairs: each split is priced between the rows "
                  "measured at the nearest pair counts (`benchmarks/simulate.py --per-context N`; linear in 1/n, "
                  "held beyond the largest n); an engine with one row is split by its prompt's token counts.")
    sim = (spec.simulator_ref().describe() if spec.simulator.model.get("source") == "gguf-parts" else
           spec.simulator.model.get("id") or spec.simulator.model.get("file") or spec.simulator.model.get("path"))
    console.print(f"The task's simulator is {sim}; a row measured on another model scales roughly with its size.")
    quickest = min(t.seconds(sh) for t in engines for sh in shapes.values())
    if quickest > _DAY:
        console.print(f"warning: even at the fastest measured throughput this task takes "
                      f"{_hms(quickest)}: a multi-GPU job, or shrink it (fewer latents or contexts, "
                      "or a cascade)", highlight=False)
    short = corpus_shortfall(spec)
    if short:
        console.print(f"warning: {short}", highlight=False)
    return cost


def auto_engine_line(spec: TaskSpec, device: str = "cpu") -> str:
    """What `--backend auto` runs for this task on this machine, as far as is known before running."""
    from harness.io import cache_root
    from harness.simulate.choice import (
        CHOICES_FILE,
        cached_choice,
        choice_key,
        engine_versions,
        installed_engines,
        machine_description,
    )

    engines = installed_engines()
    if len(engines) == 1:
        return f"--backend auto runs {engines[0]} here: the only engine installed (vLLM is not)."
    key = choice_key(machine_description(device), spec.simulator_ref().key(), spec.simulator.prompt_version,
                     engine_versions(engines))
    hit = cached_choice(cache_root() / CHOICES_FILE, key, engines)
    if hit is not None:
        return f"--backend auto runs {hit.describe()}."
    return (f"--backend auto will time {' and '.join(engines)} on this task's first calibration contexts at its "
            "first eval here (once; vLLM takes minutes to start) and run the faster.")


_DAY = 24 * 3600.0

# Engines that compute a context's prompt once for all its pairs (vLLM through its prefix cache).
SHARING = frozenset({"prefix", "vllm", "http"})


def split_shapes(cost: Cost, exhaustive: bool, n_cal: int, n_test: int) -> tuple[tuple[int, float], ...]:
    """(predictions, pairs per context) for calibration, test and detection."""
    per = (cost.latents, cost.latents) if exhaustive else (cost.calibration / max(n_cal, 1),
                                                           cost.test / max(n_test, 1))
    return ((cost.calibration, max(per[0], 1.0)), (cost.test, max(per[1], 1.0)), (cost.detection, 1.0))


@dataclass(frozen=True)
class Throughput:
    """One engine on one machine and model, and its seconds per prediction as a function of the pairs per
    context n: measured points in x = 1/n, interpolated linearly between them and held at the nearest one beyond
    (a context's own prompt tokens are computed once for its n pairs, so the cost per prediction falls with n;
    it does not keep falling past the largest n measured, where the suffixes alone remain)."""

    backend: str
    model: str
    device: str
    cpu: str
    measured: tuple[tuple[int | None, float], ...]   # (pairs per context, predictions/s) of each row
    knots: tuple[tuple[float, float], ...]           # (1/n, seconds per prediction), sorted by 1/n

    def rate(self, n: float) -> float:
        import numpy as np

        xs, ts = zip(*self.knots, strict=True)
        return 1.0 / float(np.interp(1.0 / max(n, 1.0), xs, ts))

    def seconds(self, shape) -> float:
        return sum(count / self.rate(n) for count, n in shape)

    def measured_text(self) -> str:
        return ", ".join(f"{'?' if n is None else n}: {r:.1f}" for n, r in sorted(self.measured, key=lambda x: x[0] or 0))


def _tokens(m: dict) -> tuple[float, float] | None:
    """(suffix tokens, the context's own prompt tokens) from a row's workload text, or None."""
    import re

    hit = re.search(r"head (\d+), prefix mean (\d+), suffix mean (\d+)", m.get("workload", ""))
    if not hit:
        return None
    head, prefix, suffix = (float(x) for x in hit.groups())
    return suffix, max(prefix - head, 0.0)


def fit_throughputs(rows: list[dict]) -> list[Throughput]:
    """Group throughput rows by engine, model, dtype, device and CPU. A sharing engine measured at two or more
    pair counts: its measured points (the mean where several rows share an n). Measured at one: a line in 1/n
    through that point, split by the row's token counts (seconds = c (suffix tokens + context tokens / n)).
    Otherwise, and for an engine that shares nothing (plain), flat at the rows' mean."""
    groups: dict[tuple, list[dict]] = {}
    for m in rows:
        groups.setdefault((m["backend"], m["model"], m.get("dtype"), m["device"], m.get("cpu", "?")), []).append(m)
    out = []
    for (backend, model, _, device, cpu), ms in groups.items():
        points = [(pairs_per_context(m), 1.0 / m["predictions_per_s"], m) for m in ms]
        by_n: dict[int, list[float]] = {}
        for n, t, _ in points:
            if n:
                by_n.setdefault(n, []).append(t)
        knots = [(1.0, sum(t for _, t, _ in points) / len(points))]
        if backend in SHARING and len(by_n) >= 2:
            knots = [(1.0 / n, sum(t) / len(t)) for n, t in by_n.items()]
        elif backend in SHARING and len(by_n) == 1:
            (n, ts), = by_n.items()
            tokens = _tokens(next(m for k, _, m in points if k))
            if tokens is not None:
                suffix, context = tokens
                per_token = (sum(ts) / len(ts)) / (suffix + context / n)
                knots = [(0.0, per_token * suffix), (1.0, per_token * (suffix + context))]
        out.append(Throughput(backend, model, device, cpu, tuple((n, m["predictions_per_s"]) for n, _, m in points),
                              tuple(sorted(knots))))
    return out


def pairs_per_context(m: dict) -> int | None:
    """Pairs per context in a throughput row's workload (older rows say it in their workload text only)."""
    import re

    if m.get("per_context"):
        return int(m["per_context"])
    hit = re.match(r"\d+ contexts x (\d+) explanations", m.get("workload", ""))
    return int(hit.group(1)) if hit else None


def short_cpu(cpu: str) -> str:
    """"Intel(R) Xeon(R) Processor (family 6 model 207, AVX-512, AMX-BF16, KVM guest)" -> "Intel Xeon (6/207,
    AVX-512, AMX-BF16)": what tells throughputs apart, narrow enough for an 80-column table."""
    import re

    out = re.sub(r"\(R\)|\(TM\)| Processor|, \w+ guest", "", cpu)
    return re.sub(r"family (\d+) model (\d+)", r"\1/\2", out).strip()


def _hms(s: float) -> str:
    h, rem = divmod(int(s), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"
