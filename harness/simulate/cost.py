"""`harness estimate`: how many simulator predictions a task costs and how long that takes, before running.

Counts come from the task spec alone (so they work offline, even for hub tasks); time comes from the
throughput that `benchmarks/simulate.py` measured and recorded in `harness/simulate/throughput.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.simulate.cascade import CascadeSettings, expected_predictions, task_cascade
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


def cascade_cost(spec: TaskSpec, cascade: CascadeSettings) -> Cost:
    """Expected predictions under a cascade: calibration and test contexts see top + sample x rest latents each;
    detection is simulated in full (harness/simulate/cascade.py)."""
    m, c = rewritten_count(spec), spec.contexts
    full = prediction_cost(spec)
    return Cost(m, round(expected_predictions(c.calibration, m, cascade)),
                round(expected_predictions(c.test, m, cascade)), full.detection)


def print_estimate(task: str, backend: str = "auto", overrides=(), console=None,
                   cascade: CascadeSettings | None = None) -> Cost:
    spec = load_task(task, list(overrides))
    cascade = task_cascade(spec, cascade)   # a task that fixes its cascade is estimated with it
    cost = prediction_cost(spec)
    console = console or safe_console()
    costs = {"exhaustive": cost}
    if cascade is not None:
        costs[f"cascade (top {cascade.top}, sample {cascade.sample:g})"] = cascade_cost(spec, cascade)
    counts = [[split, *(f"{getattr(c, split):,}" for c in costs.values())]
              for split in ("calibration", "test", "detection", "total")]
    print_table(console, (Column("split"), *(Column(n, numeric=True) for n in costs)), counts,
                title=f"{spec.id} ({spec.hash[:12]}): simulator predictions ({cost.latents:,} latents)")
    if cascade is not None:
        # The floor is sum_j min(ceil(r_j n_cal) + 1, n_cal) over rewritten latents, and firing rates sum to at
        # most k (TopK keeps k latents per token): so at most n_cal k + 2m more, whatever the fire rates are.
        n_cal = spec.contexts.calibration
        floor = min(n_cal * spec.coder.k + 2 * cost.latents, n_cal * cost.latents)
        console.print(f"the cascade makes {cost.total / max(costs[list(costs)[1]].total, 1):.1f}x fewer predictions "
                      f"(expected; its random sample varies, and its calibration floor adds at most {floor:,})")
    rows = [m for m in load_throughputs() if backend in ("auto", m["backend"])]
    if not rows:
        raise HarnessError(f"no measured throughput for backend {backend!r} in {THROUGHPUT_FILE}: "
                           "run `python benchmarks/simulate.py` to measure it")
    cols = (Column("backend", key=True), Column("model", key=True), Column("device"),
            Column("predictions/s", numeric=True), *(Column(f"time, {n}", numeric=True) for n in costs))
    cells = [[m["backend"], m["model"], m["device"], f"{m['predictions_per_s']:.1f}",
              *(_hms(c.total / m["predictions_per_s"]) for c in costs.values())]
             for m in sorted(rows, key=lambda m: -m["predictions_per_s"])]
    print_table(console, cols, cells, title="projected simulation time at measured throughputs")
    sim = (spec.simulator_ref().describe() if spec.simulator.model.get("source") == "gguf-parts" else
           spec.simulator.model.get("id") or spec.simulator.model.get("file") or spec.simulator.model.get("path"))
    console.print(f"The task's simulator is {sim}; a row measured on another model scales roughly with its size.")
    return cost


def _hms(s: float) -> str:
    h, rem = divmod(int(s), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"
