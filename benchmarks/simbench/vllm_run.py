"""vLLM in a process of its own (it may live in another virtual environment): the parent's side, which
starts and times it, and the worker's side, which `simulate.py --vllm-worker` runs."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simbench.machine import LoadMeter, log

ROOT = Path(__file__).resolve().parents[2]


VLLM_SKIP = "vLLM not installed: skipped (pip install 'harness[vllm]' or pass --vllm-python)"
MARK = "@@SIMBENCH "   # protocol lines between the parent and the vLLM worker


def vllm_preload(py: str, mode: str) -> list[str]:
    """What vLLM's CPU docs ask to preload for best speed: tcmalloc and the environment's Intel OpenMP."""
    if mode == "none":
        return []
    libs = []
    for cand in ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
                 "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4"):
        if Path(cand).is_file():
            libs.append(cand)
            break
    iomp = Path(py).resolve().parent.parent / "lib" / "libiomp5.so"
    if not iomp.is_file():
        iomp = Path(py).parent.parent / "lib" / "libiomp5.so"
    if iomp.is_file():
        libs.append(str(iomp))
    return libs


def find_vllm_python(flag: str | None) -> str | None:
    """An interpreter that imports vllm, or None."""
    candidates = [flag] if flag else [sys.executable, str(ROOT / ".venv-vllm" / "bin" / "python")]
    for py in candidates:
        if not py or not Path(py).exists():
            continue
        if py == sys.executable:
            import importlib.util
            if importlib.util.find_spec("vllm") is not None:
                return py
            continue
        try:
            r = subprocess.run([py, "-c", "import importlib.util,sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
                               capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0:
            return py
    return None




def run_vllm(py: str, args, model_dir: Path, contexts, warm_contexts, explanations, pairs, warm_pairs,
             prompts, pauser, workdir: Path) -> dict:
    """Starts the worker, waits until its engine is up and warm, times it, returns its report."""
    import numpy as np

    spec = {
        "model_dir": str(model_dir), "threads": args.threads, "dtype": args.vllm_dtype,
        "kv_cache_gib": args.kv_cache_gib, "block_size": args.vllm_block_size, "max_model_len": args.max_model_len,
        "head_dtype": args.vllm_head_dtype,
        "gpu_memory_utilization": args.vllm_gpu_memory if str(args.device).startswith("cuda") else None,
        "prompt_version": args.prompt, "max_chars": args.max_chars, "repeats": args.repeats,
        "contexts": [[c.context_id, c.text, c.last_token] for c in contexts],
        "warm_contexts": [[c.context_id, c.text, c.last_token] for c in warm_contexts],
        "explanations": explanations, "pairs": pairs, "warm_pairs": warm_pairs, "prompts": prompts,
        "out": str(workdir / "vllm_out.npz"),
    }
    spec_path = workdir / "vllm_spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / "vllm_worker.log"
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(args.threads)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, args.kv_cache_gib))))
    env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{args.threads - 1}" if args.threads > 1 else "0"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    preload = vllm_preload(py, args.vllm_preload)
    if preload:
        env["LD_PRELOAD"] = ":".join(preload + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else []))
    log(f"vLLM: starting the engine with {py} (log: {log_path}); this takes a few minutes on a CPU")
    t_start = time.perf_counter()
    with open(log_path, "w") as logf:
        proc = subprocess.Popen([py, str(ROOT / "benchmarks" / "simulate.py"), "--vllm-worker", str(spec_path)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf, text=True, bufsize=1,
                                env=env, cwd=str(ROOT))
        report = None
        stdin, stdout = proc.stdin, proc.stdout
        assert stdin is not None and stdout is not None  # both are pipes (subprocess.PIPE above)
        try:
            deadline = time.monotonic() + args.vllm_timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"vLLM worker gave no result in {args.vllm_timeout} s")
                ready, _, _ = select.select([stdout], [], [], min(left, 5.0))
                if not ready:
                    if proc.poll() is not None:
                        break
                    continue
                line = stdout.readline()
                if not line:
                    break
                if not line.startswith(MARK):
                    logf.write(line)
                    continue
                msg = json.loads(line[len(MARK):])
                if msg["event"] == "ready":
                    log(f"vLLM: engine up and warm after {time.perf_counter() - t_start:.0f} s; timing")
                    pauser.pause()
                    meter = LoadMeter(os.getpid()).start()
                    stdin.write("go\n")
                    stdin.flush()
                elif msg["event"] == "done":
                    others = meter.others()
                    pauser.resume()
                    report = msg
                    report["others"] = others
                    stdin.write("exit\n")
                    stdin.flush()
                    break
                elif msg["event"] == "error":
                    pauser.resume()
                    raise RuntimeError(msg["message"])
        finally:
            pauser.resume()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if report is None:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"vLLM worker exited ({proc.returncode}) without a result; log tail:\n{tail}")
    with np.load(spec["out"]) as z:
        report["probs"], report["mass"] = z["probs"], z["mass"]
    report["preload"] = [Path(x).name for x in preload]
    return report


def vllm_worker(spec_path: str) -> int:
    """Runs in the vLLM interpreter: engine up, warm-up, then times `predict` when the parent says go."""
    spec = json.loads(Path(spec_path).read_text())

    def send(**msg):
        sys.stdout.write(MARK + json.dumps(msg) + "\n")
        sys.stdout.flush()

    try:
        import numpy as np

        from harness.simulate import SimContext
        from harness.simulate.vllm_backend import VLLMSimulator

        llm_kwargs = {}
        if spec.get("head_dtype"):
            llm_kwargs["hf_overrides"] = {"head_dtype": spec["head_dtype"]}
        if spec.get("block_size"):
            llm_kwargs["block_size"] = int(spec["block_size"])
        if spec.get("max_model_len"):
            llm_kwargs["max_model_len"] = int(spec["max_model_len"])
        if spec.get("gpu_memory_utilization"):
            llm_kwargs["gpu_memory_utilization"] = float(spec["gpu_memory_utilization"])
        sim = VLLMSimulator(spec["model_dir"], None, spec["prompt_version"], spec["max_chars"], "bench",
                            threads=spec["threads"], dtype=spec["dtype"], kv_cache_gib=spec["kv_cache_gib"],
                            llm_kwargs=llm_kwargs)
        contexts = [SimContext(*c) for c in spec["contexts"]]
        warm = [SimContext(*c) for c in spec["warm_contexts"]]
        expl = spec["explanations"]
        pairs = [tuple(p) for p in spec["pairs"]]
        # The same token ids as the torch engines got (this interpreter may have another transformers).
        mismatched = sum(
            sim.builder.prefix(contexts[c].text, contexts[c].last_token) + sim.builder.suffix(expl[e]) != want
            for (c, e), want in zip(pairs, spec["prompts"], strict=True)
        )
        sim.predict(warm, expl, [tuple(p) for p in spec["warm_pairs"]])
        cached: list = []
        generate = sim.llm.generate

        def counting_generate(*a, **k):   # prompt tokens served from the prefix cache, for the report
            outs = generate(*a, **k)
            cached.extend(getattr(o, "num_cached_tokens", None) for o in outs)
            return outs
        sim.llm.generate = counting_generate
        info: dict[str, Any] = {}
        try:
            import vllm  # pyright: ignore[reportMissingImports]  # the optional [vllm] extra, in the worker's python
            cfg = sim.llm.llm_engine.vllm_config
            info = {"vllm_version": vllm.__version__, "dtype": str(cfg.model_config.dtype).replace("torch.", ""),
                    "block_size": cfg.cache_config.block_size,
                    "head_dtype": str(cfg.model_config.head_dtype).replace("torch.", ""),
                    "prefix_caching": bool(cfg.cache_config.enable_prefix_caching)}
        except Exception as e:  # informative only
            info = {"info_error": f"{type(e).__name__}: {e}"}
        send(event="ready")
        if sys.stdin.readline().strip() != "go":
            return 1
        best = float("inf")
        for r in range(max(1, int(spec.get("repeats", 1)))):
            if r:  # a repeat must not find the timed prompts cached: start again from the warm-up state
                sim.llm.reset_prefix_cache()
                sim.predict(warm, expl, [tuple(p) for p in spec["warm_pairs"]])
                cached.clear()
            t0 = time.perf_counter()
            probs, mass = sim.predict(contexts, expl, pairs)
            best = min(best, time.perf_counter() - t0)
        np.savez(spec["out"], probs=probs, mass=mass)
        known = [c for c in cached if c is not None]
        if known:
            info["cached_tokens"] = float(np.mean(known))
        send(event="done", seconds=best, prompt_mismatches=int(mismatched), by_token_ids=bool(sim.by_token_ids), **info)
        sys.stdin.readline()
        return 0
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which prints it
        import traceback
        traceback.print_exc()
        send(event="error", message=f"{type(e).__name__}: {e}")
        return 1
