"""The `harness` command line: a thin layer over the modules; every user error is one `error:` line."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.io import env_int, one_line, writable_dir, writable_file
from harness.errors import HarnessError

# No markup, no emoji codes: method names, task ids and paths come from users, and "[/b]" or ":x:" in
# them is text ("[/b]" as markup raises MarkupError, "[coder]" would vanish from a message).
console = Console(stderr=False, markup=False, emoji=False)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line (exit 2) like every other user error."""

    def error(self, message):
        raise HarnessError(f"{self.prog}: {message} — see `{self.prog} --help`")


def _overrides(p):
    p.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="edit the task spec for this run, e.g. subject.path=/models/pythia-160m (TOML value)")


def cmd_tasks(args) -> int:
    from harness.task.spec import list_tasks, tasks_dir

    specs = list_tasks(Path(args.dir) if args.dir else None)
    table = Table(title=f"tasks in {args.dir or tasks_dir()}")
    for col in ("id", "hash", "subject", "coder", "T", "cal/test", "rewritten", "simulator"):
        table.add_column(col)
    for s in specs:
        subj = s.subject.get("id") or s.subject.get("file") or s.subject.get("path")
        rw = s.latents.rewritten if s.latents.rewritten in ("all",) else (
            f"{s.latents.count} ({s.latents.rule})" if s.latents.rewritten == "rule" else f"{len(s.latents.rewritten)} listed")
        sim = (s.simulator.model.get("id") or s.simulator.model.get("file") or s.simulator.model.get("path")
               if s.simulator.model.get("source") != "gguf-parts" else s.simulator_ref().describe())
        table.add_row(s.id, s.hash[:12], str(subj), f"{s.coder.kind} @ {s.coder.hookpoint}", str(s.contexts.T),
                      f"{s.contexts.calibration}/{s.contexts.test}", str(rw), str(sim))
    console.print(table)
    return 0


def cmd_prepare(args) -> int:
    from harness.data.prepare import prepare
    from harness.task.spec import load_task

    spec = load_task(args.task, args.override)
    prep = prepare(spec, args.device)
    b = prep.ce_base
    table = Table(title=f"{spec.id} ({spec.hash[:12]}): prepared in {prep.cache_dir}")
    table.add_column("condition")
    table.add_column("mean CE (test)", justify="right")
    for k in ("clean", "coder", "zero_output"):
        table.add_row(k, f"{b[k].mean():.4f}" if k != "zero_output" or spec.coder.kind == "transcoder" else "n/a (SAE)")
    console.print(table)
    console.print(f"rewritten latents: {len(prep.rewritten)}  alive in activation sample: "
                  f"{int((prep.table.fire_rate > 0).sum())}/{prep.num_latents}")
    return 0


def cmd_eval(args) -> int:
    from harness.evaluate import EvalConfig, evaluate
    from harness.report.leaderboard import print_rich

    if not args.no_leaderboard:
        writable_dir(args.leaderboard, "leaderboard")
    cfg = EvalConfig(task=args.task, submission=Path(args.explanations), backend=args.backend, device=args.device,
                     results_dir=Path(args.results), overrides=args.override,
                     endpoints=[e for e in (args.endpoints or "").split(",") if e], served_model=args.served_model,
                     command="harness " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    result, path = evaluate(cfg)
    _print_summary(result)
    console.print(f"result: {one_line(str(path))}")
    if not args.no_leaderboard:
        # The spec just evaluated defines the hash, whether or not it is registered under tasks/.
        rows, _ = _leaderboard_rows(Path(args.results), result["task"]["id"],
                                    {result["task"]["id"]: result["task"]["hash"]})
        from harness.report.leaderboard import write_leaderboard

        out = write_leaderboard(result["task"]["id"], rows, args.leaderboard, task_hash=result["task"]["hash"])
        print_rich(rows, console, title=f"leaderboard: {result['task']['id']}")
        console.print(f"leaderboard: {one_line(str(out))}")
    return 0


def _num(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def _fmt(e) -> str:
    if e is None:
        return "n/a"
    if e.get("value") is not None and (e.get("lo") is None or e.get("hi") is None):
        # An interval is never dropped silently: say why it is missing.
        return f"{_num(e['value'])} ({'unbounded' if 'unbounded' in e.get('note', '') else 'no CI'})"
    return f"{_num(e['value'])} [{_num(e['lo'])}, {_num(e['hi'])}]"


def _print_summary(r: dict) -> None:
    h = r["headline"]
    t = Table(title=f"{r['task']['id']} · {r['submission']['method']} · coverage {r['submission']['coverage']:.0%}")
    t.add_column("metric")
    t.add_column("value [95% CI]", justify="right")
    t.add_row("recovery R (quantile, all rewritten)", _fmt(h["recovery"]))
    t.add_row("ΔCE median simulated", _fmt(h["delta_ce_median"]))
    t.add_row("ΔCE median latent_zero", _fmt(h["latent_zero_delta_ce_median"]))
    t.add_row("simulated − latent_zero (mean)", _fmt(h["sim_minus_zero_mean"]))
    t.add_row("sensitivity / specificity", f"{_num(h['sensitivity'])} / {_num(h['specificity'])}")
    t.add_row("detection AUROC / balanced accuracy",
              f"{_num(h['detection_auroc'])} / {_num(h.get('detection_balanced_accuracy'))}")
    ce = r["ce_means"]
    t.add_row("mean CE clean / coder / zero_output",
              f"{_num(ce['clean'])} / {_num(ce['coder'])} / {_num(ce['zero_output'])}")
    for mode in ("none", "prompt-fit"):
        c = next(c for c in r["conditions"] if c["name"] == "simulated" and c["calibration"] == mode
                 and c["selection"] == "all")
        t.add_row(f"recovery, calibration={mode}", _fmt(c["recovery"]))
    console.print(t)
    for w in r.get("warnings", []):
        # Degenerate predictions (constant, saturated, copied): scored as they are, but said out loud.
        Console(stderr=True).print(f"[yellow]warning:[/] {w['message']}", highlight=False, soft_wrap=True)


def _leaderboard_rows(results: Path, task_id: str | None, known: dict[str, str] | None = None):
    from harness.report.leaderboard import collect_results
    from harness.task.spec import list_tasks

    hashes = {s.id: s.hash for s in list_tasks()}
    hashes.update(known or {})
    if task_id and task_id not in hashes:
        from harness.task.spec import load_task

        hashes[task_id] = load_task(task_id).hash
    return collect_results(results, task_id, task_hashes=hashes)


def cmd_leaderboard(args) -> int:
    from harness.report.leaderboard import print_rich, render, write_leaderboard
    from harness.task.spec import list_tasks

    if args.write:
        writable_dir(args.out, "leaderboard")
    task_ids = [args.task] if args.task else [s.id for s in list_tasks()]
    for tid in task_ids:
        rows, rejected = _leaderboard_rows(Path(args.results), tid)
        for rj in rejected:
            console.print(Text.assemble(("rejected", "yellow"), f" {one_line(rj.path)}: {one_line(rj.reason)}"))
        if args.format == "rich":
            print_rich(rows, console, title=tid)
        else:
            sys.stdout.write(render(rows, args.format) + "\n")
        if args.write:
            from harness.task.spec import load_task

            out = write_leaderboard(tid, rows, args.out, task_hash=load_task(tid).hash)
            console.print(f"wrote {one_line(str(out))}")
    return 0


def cmd_validate(args) -> int:
    from harness.task.inputs import TaskInputs
    from harness.task.submission import load_submission
    from harness.task.spec import load_task

    spec = load_task(args.task, args.override)
    sub = load_submission(args.file, task_id=spec.id, num_latents=TaskInputs(spec).num_latents(),
                          max_chars=spec.simulator.max_explanation_chars)
    console.print(f"ok: {one_line(args.file)}: {len(sub.explanations)} explanations for task {spec.id} "
                  f"(method {sub.method!r}, sha256 {sub.sha256[:12]})")
    return 0


def cmd_import_delphi(args) -> int:
    from harness.task.submission import import_delphi, save_submission

    writable_file(args.output, "output")
    d = import_delphi(args.folder, task_id=args.task, method=args.method, description=args.description,
                      hookpoint=args.hookpoint)
    path = save_submission(d, args.output)
    console.print(f"wrote {one_line(str(path))}: {len(d['explanations'])} explanations")
    return 0


def cmd_make_tiny_task(args) -> int:
    from harness.testing.tiny import TinyTaskOptions, make_tiny_task

    writable_dir(args.out, "output")
    opts = TinyTaskOptions(task_id=args.id, arch=args.arch, kind=args.kind, seed=args.seed)
    path = make_tiny_task(Path(args.out), opts)
    console.print(f"wrote {one_line(str(path))}")
    return 0


def cmd_explain(args) -> int:
    from harness.baselines.explain import run_explain

    path = run_explain(args.task, args.method, Path(args.output), overrides=args.override, seed=args.seed,
                       source=args.source, device=args.device)
    console.print(f"wrote {one_line(str(path))}")
    return 0


def cmd_findings(args) -> int:
    from harness.report.findings import analyse, render

    text = render(analyse(Path(args.results), args.task, args.real, args.control), args.task)
    sys.stdout.write(text + "\n")
    return 0


def cmd_estimate(args) -> int:
    from harness.simulate.cost import print_estimate

    print_estimate(args.task, args.backend, overrides=args.override, console=console)
    return 0


def cmd_verify_result(args) -> int:
    from harness.report.verify import verify_result

    worst = 0
    for path in args.results:
        rep = verify_result(path)
        for line in rep.lines():
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        worst = max(worst, rep.status)
    return worst


def cmd_gaming(args) -> int:
    from harness.baselines.gaming import run_gaming

    task_id = Path(args.task).name if Path(args.task).exists() else args.task
    entries, text = run_gaming(
        args.task, Path(args.submissions or f"submissions/gaming/{task_id}"), Path(args.results),
        Path(args.report) if args.report else None, backend=args.backend, device=args.device,
        overrides=args.override, endpoints=[e for e in (args.endpoints or "").split(",") if e],
        served_model=args.served_model)
    sys.stdout.write(text + "\n")
    # Non-zero when an adversarial submission beats the control: usable as a CI gate.
    return 1 if any(e.above_control for e in entries if e.method.startswith("gaming-")) else 0


def cmd_check_simulator(args) -> int:
    from harness.simulate.check import run_check

    only = tuple(args.only.split(",")) if args.only else ("hand-written", "named-token", "real-vs-shuffled")
    results = run_check(args.task, args.override, backend=args.backend, device=args.device,
                        submission=args.submission, only=only, seed=args.seed)
    for r in results:
        console.print(f"{'PASS' if r.passed else 'FAIL'}  {r.name}: {r.summary}  (pass: {r.threshold})",
                      highlight=False, soft_wrap=True)
        if args.verbose:
            for line in r.detail:
                console.print(f"      {line}", highlight=False, soft_wrap=True)
    ok = all(r.passed for r in results)
    console.print(f"simulator check: {'passed' if ok else 'FAILED'} ({sum(r.passed for r in results)}/{len(results)})")
    # Non-zero when a check fails, so a script can gate a simulator on it.
    return 0 if ok else 1


def cmd_site(args) -> int:
    from harness.report.site import build_site

    index = build_site(Path(args.output), Path(args.results), args.task, console=console)
    console.print(f"site: {index.resolve()}")
    return 0


def cmd_failures(args) -> int:
    from harness.report.failures import (explanations_of, latent_report, load_decoder, load_with_side, print_report, task_spec,
                           test_windows)

    loaded = load_with_side(args.result)
    if args.latent not in loaded.latents:
        # Checked before the tokenizer loads: a wrong latent number answers at once.
        latent_report(loaded, args.latent)
    spec, why = task_spec(loaded.result.task["id"], args.task)
    expl, enote = explanations_of(loaded.result, spec) if spec is not None else (None, why)
    decode, dnote = load_decoder(spec) if spec is not None else (None, why)
    windows, wnote = test_windows(loaded, spec)
    rep = latent_report(loaded, args.latent, explanations=expl, explanation_note=enote, windows=windows,
                        decode=decode, text_note=wnote or dnote, n=args.n)
    print_report(rep, loaded, console)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("tasks", help="list registered tasks with their hashes")
    s.add_argument("--dir", help="tasks folder (default: the repo's tasks/ or $HARNESS_TASKS_DIR)")
    s.set_defaults(fn=cmd_tasks)

    s = sub.add_parser("prepare", help="build and cache a task's splits, true activations and baseline CE")
    s.add_argument("--task", required=True)
    s.add_argument("--device", default="auto")
    _overrides(s)
    s.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("eval", help="score an explanation set on a task")
    s.add_argument("--task", required=True)
    s.add_argument("--explanations", required=True)
    s.add_argument("--backend", default="auto", help="simulator engine: auto (fastest available), prefix, plain, vllm, http")
    s.add_argument("--device", default="auto")
    s.add_argument("--endpoints", help="http backend: comma-separated OpenAI-compatible server URLs")
    s.add_argument("--served-model", default="", help="http backend: the model name the servers serve")
    s.add_argument("--results", default="results")
    s.add_argument("--leaderboard", default="leaderboard")
    s.add_argument("--no-leaderboard", action="store_true")
    _overrides(s)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("leaderboard", help="tables built from result files")
    s.add_argument("--task")
    s.add_argument("--format", choices=["md", "csv", "html", "rich"], default="rich")
    s.add_argument("--results", default="results")
    s.add_argument("--write", action="store_true", help="also write leaderboard/<task>.md")
    s.add_argument("--out", default="leaderboard")
    s.set_defaults(fn=cmd_leaderboard)

    s = sub.add_parser("validate", help="check a submission file against a task")
    s.add_argument("file")
    s.add_argument("--task", required=True)
    _overrides(s)
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("import-delphi", help="turn a folder of Delphi explanation files into a submission")
    s.add_argument("folder")
    s.add_argument("--task", required=True)
    s.add_argument("--method", default="delphi")
    s.add_argument("--description", default="imported from Delphi explanation files")
    s.add_argument("--hookpoint")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(fn=cmd_import_delphi)

    s = sub.add_parser("explain", help="baseline explanation methods")
    s.add_argument("--task", required=True)
    s.add_argument("--method", required=True, choices=["top-tokens", "llm", "empty", "shuffled"])
    s.add_argument("--source", help="for shuffled: the submission whose explanations are permuted")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("-o", "--output", required=True)
    _overrides(s)
    s.set_defaults(fn=cmd_explain)

    s = sub.add_parser("estimate", help="number of predictions and projected time, before running anything")
    s.add_argument("--task", required=True)
    s.add_argument("--backend", default="auto")
    _overrides(s)
    s.set_defaults(fn=cmd_estimate)

    s = sub.add_parser("findings", help="check the paper's qualitative findings on a task's result files")
    s.add_argument("--task", required=True)
    s.add_argument("--real", default="top-tokens", help="method of the real explanation set")
    s.add_argument("--control", default="shuffled-top-tokens", help="method of its shuffled control")
    s.add_argument("--results", default="results")
    s.set_defaults(fn=cmd_findings)

    s = sub.add_parser("gaming", help="adversarial submissions vs the shuffled control (exit 1 if one beats it)")
    s.add_argument("--task", required=True)
    s.add_argument("--submissions", help="where the suite's submissions are written (default submissions/gaming/<task>)")
    s.add_argument("--results", default="gaming-results")
    s.add_argument("--report", help="also write the Markdown report here, e.g. docs/gaming-<task>.md")
    s.add_argument("--backend", default="auto")
    s.add_argument("--device", default="auto")
    s.add_argument("--endpoints", help="http backend: comma-separated OpenAI-compatible server URLs")
    s.add_argument("--served-model", default="")
    _overrides(s)
    s.set_defaults(fn=cmd_gaming)

    s = sub.add_parser("verify-result", help="recompute every number of result files from their side files "
                       "(exit 0 all match, 1 a number differs, 3 side file too old to recompute some)")
    s.add_argument("results", nargs="+", metavar="RESULT.json")
    s.set_defaults(fn=cmd_verify_result)

    s = sub.add_parser("check-simulator", help="does the task's simulator read explanations? three tests, "
                       "pass/fail (exit 1 if one fails)")
    s.add_argument("--task", required=True)
    s.add_argument("--submission", help="explanations for real-vs-shuffled (default submissions/<task>/top-tokens.json)")
    s.add_argument("--only", help="comma-separated subset of hand-written,named-token,real-vs-shuffled")
    s.add_argument("--backend", default="auto")
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-v", "--verbose", action="store_true", help="one line per case, token and latent")
    _overrides(s)
    s.set_defaults(fn=cmd_check_simulator)

    s = sub.add_parser("site", help="build the static leaderboard site with per-latent failure pages")
    s.add_argument("--task", help="one task (id or folder); default: every registered task")
    s.add_argument("--results", default="results")
    s.add_argument("-o", "--output", required=True, help="folder to write the site into")
    s.set_defaults(fn=cmd_site)

    s = sub.add_parser("failures", help="a latent's top false-positive and false-negative test contexts")
    s.add_argument("result", help="a result file, results/<task>/<tag>.json")
    s.add_argument("--latent", type=int, required=True)
    s.add_argument("--task", help="the task folder, for a task that is not registered under tasks/")
    s.add_argument("-n", type=int, default=5, help="contexts per table (default 5)")
    s.set_defaults(fn=cmd_failures)

    s = sub.add_parser("make-tiny-task", help="build a tiny random task (for smoke runs and tests)")
    s.add_argument("--out", required=True)
    s.add_argument("--id", default="tiny-llama-transcoder")
    s.add_argument("--arch", choices=["llama", "gpt_neox"], default="llama")
    s.add_argument("--kind", choices=["transcoder", "sae"], default="transcoder")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_make_tiny_task)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
        if os.environ.get("HARNESS_THREADS"):
            # On a shared CPU, one thread per process beats two fighting for a core (OpenMP spin-waits).
            import torch

            torch.set_num_threads(env_int("HARNESS_THREADS", 1))
        # Our own rich bars show progress; transformers' per-load bars would bury the one-line errors.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        return args.fn(args)
    except HarnessError as e:
        return _error(e)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: finished work is cached; rerun the same command to resume")
        return 130


def _error(e: HarnessError) -> int:
    # one_line: a message quoting user text (a newline in a method name, a lone surrogate) stays one line.
    Console(stderr=True, markup=False, emoji=False, highlight=False, soft_wrap=True).print(
        Text.assemble(("error:", "bold red"), " ", one_line(str(e))))
    return 2


if __name__ == "__main__":
    sys.exit(main())
