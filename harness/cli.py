"""The `harness` command line: a thin layer over the modules; every user error is one `error:` line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text

from harness.errors import HarnessError
from harness.io import env_int, one_line, writable_dir, writable_file
from harness.names import Backend, RankMetric, allowed
from harness.terminal import console as safe_console
from harness.terminal import write as write_out

if TYPE_CHECKING:
    from harness.result import Result

# No markup, no emoji codes: method names, task ids and paths come from users, and "[/b]" or ":x:" in
# them is text ("[/b]" as markup raises MarkupError, "[coder]" would vanish from a message). A SafeConsole:
# an ESC or OSC sequence in a submitted method name prints as text, never reaches the terminal raw.
console = safe_console()


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line (exit 2) like every other user error."""

    def error(self, message):
        raise HarnessError(f"{self.prog}: {message} — see `{self.prog} --help`")


def _overrides(p):
    p.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="edit the task spec for this run, e.g. subject.path=/models/pythia-160m (TOML value)")


def cmd_tasks(args) -> int:
    from harness.task.listing import COLUMNS, task_cells, task_json
    from harness.task.spec import list_tasks, tasks_dir
    from harness.terminal import print_table

    tasks = [task_json(s) for s in list_tasks(Path(args.dir) if args.dir else None)]
    if args.format == "json":
        _print_json(tasks)
    else:
        print_table(console, COLUMNS, [task_cells(t) for t in tasks], title=f"tasks in {args.dir or tasks_dir()}",
                    fmt=args.format)
    return 0


def _say(msg: str) -> None:
    """A one-line message (paths, ids): never folded at the terminal width, so it can be copied whole."""
    console.print(msg, soft_wrap=True)


def _print_json(obj) -> None:
    from harness.terminal import json_text

    sys.stdout.write(json_text(obj) + "\n")


def cmd_prepare(args) -> int:
    from harness.data.prepare import prepare
    from harness.task.spec import load_task
    from harness.terminal import Column, print_table

    spec = load_task(args.task, args.override)
    prep = prepare(spec, args.device)
    b = prep.ce_base
    ce = [[k, f"{b[k].mean():.4f}" if k != "zero_output" or spec.coder.kind == "transcoder" else "n/a (SAE)"]
          for k in ("clean", "coder", "zero_output")]
    print_table(console, (Column("condition"), Column("mean CE (test)", numeric=True)), ce,
                title=f"{spec.id} ({spec.hash[:12]}): prepared in {prep.cache_dir}")
    _say(f"rewritten latents: {len(prep.rewritten)}  alive in activation sample: "
                  f"{int((prep.table.fire_rate > 0).sum())}/{prep.num_latents}")
    return 0


CASCADE_HELP = ("simulate only the M latents per context a cheap first stage ranks highest, plus a random "
                "sample of the rest to estimate the error: M or top=M[,sample=0.02][,seed=0][,ranker=lexical|"
                "embedding|combined|fire-rate][,calibration=weighted|fill] (off by default; "
                "docs/protocol-choices.md, Cascade)")


def cmd_eval(args) -> int:
    from harness.api import evaluate_to_file
    from harness.report.leaderboard import print_leaderboard, write_leaderboard
    from harness.report.write import portable_command

    if args.leaderboard:
        writable_dir(args.leaderboard, "leaderboard")
    result, path = evaluate_to_file(args.task, args.submission, results_dir=args.results, backend=args.backend,
                                    device=args.device, cascade=args.cascade, overrides=args.override,
                                    endpoints=[e for e in (args.endpoints or "").split(",") if e],
                                    served_model=args.served_model,
                                    command="harness " + portable_command(sys.argv[1:]))
    _print_summary(result)
    _say(f"result: {one_line(str(path))}")
    # The spec just evaluated defines the hash, whether or not it is registered under tasks/.
    tid, thash = result.task.id, result.task.hash
    from harness.api import leaderboard_rows
    from harness.task.spec import load_task

    rows, rejected = leaderboard_rows(Path(args.results), tid, [load_task(args.task, args.override)])
    for rj in rejected:
        if rj.damaged:   # other rejections (older task hash...) are `harness leaderboard`'s to list
            _note(Text.assemble(("skipped", "yellow"), f" {one_line(rj.path)}: {one_line(rj.reason)}"))
    print_leaderboard(rows, console, title=f"leaderboard: {tid}")
    if args.leaderboard:
        _say(f"leaderboard: {one_line(str(write_leaderboard(tid, rows, args.leaderboard, task_hash=thash)))}")
    return 0


def _print_summary(r: Result) -> None:
    from harness.report.format import interval, number
    from harness.result import condition_row
    from harness.score.conditions import ALL, simulated
    from harness.terminal import Column, print_table

    h, ce = r.headline, r.ce_means
    rows = [
        ["recovery R (quantile, all rewritten)", interval(h.recovery)],
        ["ΔCE median simulated", interval(h.delta_ce_median)],
        ["ΔCE median latent_zero", interval(h.latent_zero_delta_ce_median)],
        ["simulated − latent_zero (mean)", interval(h.sim_minus_zero_mean)],
        ["sensitivity / specificity", f"{number(h.sensitivity)} / {number(h.specificity)}"],
        ["detection AUROC / balanced accuracy", f"{number(h.detection_auroc)} / {number(h.detection_balanced_accuracy)}"],
        ["mean CE clean / coder / zero_output", f"{number(ce.clean)} / {number(ce.coder)} / {number(ce.zero_output)}"],
    ]
    for mode in ("none", "prompt-fit"):
        c = condition_row(r.conditions, simulated(mode, ALL).key)
        rows.append([f"recovery, calibration={mode}", interval(c.recovery)])
    title = f"{one_line(r.task.id)} · {one_line(r.submission.method)} · coverage {r.submission.coverage:.0%}"
    print_table(console, (Column("metric"), Column("value [95% CI]", numeric=True)), rows, title=title)
    if r.cascade:
        c, e = r.cascade, r.cascade.error["test"]
        console.print(f"cascade {c.settings.to_dict()}: {c.n_llm_predictions:,} simulator predictions of "
                      f"{c.exhaustive_predictions:,} ({c.saving:.1f}x fewer); test pairs not simulated that "
                      f"would matter, estimated from {e.n_sampled:,} sampled: {interval(e.missed)} (the sample's "
                      "CI; validated in benchmarks/RESULTS.md, Cascade)",
                      highlight=False)
    for w in r.warnings:
        # Degenerate predictions (constant, saturated, copied): scored as they are, but said out loud.
        _note(Text.assemble(("warning:", "yellow"), f" {one_line(w.message)}"))


def cmd_leaderboard(args) -> int:
    from harness.report.leaderboard import (
        print_leaderboard,
        render,
        to_json,
        write_leaderboard,
    )
    from harness.task.spec import list_tasks, load_task

    if args.leaderboard:
        writable_dir(args.leaderboard, "leaderboard")
    registered = list_tasks()
    specs = registered if not args.task else (
        [s for s in registered if s.id == args.task] or [load_task(args.task)])   # an id, else a folder
    boards = [(s, _task_rows(Path(args.results), s)) for s in specs]
    if args.format in ("json", "csv"):
        # One document for every task: the rows carry their task.
        rows = [r for _, rs in boards for r in rs]
        if args.format == "json":
            _print_json(to_json(rows))
        else:
            write_out(render(rows, "csv"))
    for spec, rows in boards:
        if args.format in ("md", "html"):
            heading = f"## {spec.id}\n\n" if len(boards) > 1 else ""
            write_out(heading + render(rows, args.format) + "\n")
        elif args.format in ("auto", "rich"):
            print_leaderboard(rows, console, title=spec.id, fmt=args.format)
        if args.leaderboard:
            out = write_leaderboard(spec.id, rows, args.leaderboard, task_hash=spec.hash)
            _note(f"wrote {one_line(str(out))}")
    return 0


def _task_rows(results: Path, spec):
    """A task's ranked rows; files that cannot be ranked are named on stderr, so stdout stays one table."""
    from harness.api import leaderboard_rows

    rows, rejected = leaderboard_rows(results, spec.id, [spec])
    for rj in rejected:
        _note(Text.assemble(("rejected", "yellow"), f" {one_line(rj.path)}: {one_line(rj.reason)}"))
    return rows


def _note(msg) -> None:
    safe_console(stderr=True, highlight=False, soft_wrap=True).print(msg)


def cmd_validate(args) -> int:
    from harness.task.inputs import TaskInputs
    from harness.task.spec import load_task
    from harness.task.submission import load_submission

    spec = load_task(args.task, args.override)
    sub = load_submission(args.submission, task_id=spec.id, num_latents=TaskInputs(spec).num_latents(),
                          max_chars=spec.simulator.max_explanation_chars)
    _say(f"ok: {one_line(args.submission)}: {len(sub.explanations)} explanations for task {spec.id} "
                  f"(method {sub.method!r}, sha256 {sub.sha256[:12]})")
    return 0


def cmd_import_delphi(args) -> int:
    from harness.task.submission import import_delphi, save_submission

    writable_file(args.output, "output")
    d = import_delphi(args.delphi, task_id=_task_id(args.task), method=args.method, description=args.description,
                      hookpoint=args.hookpoint, max_chars=_max_chars(args.task))
    path = save_submission(d, args.output)
    _say(f"wrote {one_line(str(path))}: {len(d['explanations'])} explanations")
    return 0


def cmd_import_neuronpedia(args) -> int:
    from harness.task.neuronpedia import import_neuronpedia
    from harness.task.submission import save_submission

    writable_file(args.output, "output")
    got = import_neuronpedia(args.neuronpedia, task_id=_task_id(args.task), method=args.method,
                             description=args.description, source=args.source, explainer=args.explainer,
                             choose=args.choose, score_type=args.score_type, num_latents=_num_latents(args.task),
                             max_chars=_max_chars(args.task))
    path = save_submission(got.submission, args.output)
    n = len(got.submission["explanations"])
    _say(f"wrote {one_line(str(path))}: {n} explanations of {one_line(got.source)} from {got.n_rows} read "
         f"({got.n_several} latents had several; rule: {one_line(got.rule)}"
         + (f"; {got.n_blank} blank skipped" if got.n_blank else "") + ")")
    return 0


def _task_id(task: str) -> str:
    """The id a submission names: a task given by folder is named by its own id."""
    from harness.task.spec import load_task

    try:
        return load_task(task).id
    except HarnessError:
        return task


def _num_latents(task: str) -> int | None:
    """The task's coder width when it can be known here without downloading (else `validate` checks later)."""
    from harness.task.inputs import TaskInputs
    from harness.task.spec import load_task

    try:
        return TaskInputs(load_task(task)).num_latents()
    except HarnessError:
        return None


def _max_chars(task: str) -> int | None:
    """The task's explanation cap, for import-delphi; None when the task cannot be loaded here (then a
    generous default bounds each file, and `validate` applies the task's own cap later)."""
    from harness.task.spec import load_task

    try:
        return load_task(task).simulator.max_explanation_chars
    except HarnessError:
        return None


def cmd_make_tiny_task(args) -> int:
    from harness.testing.tiny import TinyTaskOptions, make_tiny_task

    writable_dir(args.output, "output")
    opts = TinyTaskOptions(task_id=args.task, arch=args.arch, kind=args.kind, seed=args.seed)
    path = make_tiny_task(Path(args.output), opts)
    _say(f"wrote {one_line(str(path))}")
    return 0


def cmd_explain(args) -> int:
    from harness.baselines.explain import run_explain

    path = run_explain(args.task, args.method, Path(args.output), overrides=args.override, seed=args.seed,
                       source=args.submission, device=args.device)
    _say(f"wrote {one_line(str(path))}")
    return 0


def cmd_findings(args) -> int:
    from harness.report.findings import analyse, render

    text = render(analyse(Path(args.results), args.task, args.real, args.control), args.task)
    write_out(text + "\n")
    return 0


def cmd_estimate(args) -> int:
    from harness.simulate.cost import print_estimate
    from harness.task.cascade import parse_cascade

    print_estimate(args.task, args.backend, overrides=args.override, console=console,
                   cascade=parse_cascade(args.cascade) if args.cascade is not None else None,
                   submission=args.submission)
    return 0


def cmd_verify_result(args) -> int:
    from harness.report.verify import verify_result

    worst = 0
    for path in args.result_files:
        rep = verify_result(path)
        for line in rep.lines():
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        worst = max(worst, rep.status)
    return worst


def cmd_reproduce(args) -> int:
    from harness.report.reproduce import print_reproduction, reproduce

    rep = reproduce(args.result, args.sample, args.seed, task=args.task, submission=args.submission,
                    backend=args.backend, device=args.device,
                    endpoints=[e for e in (args.endpoints or "").split(",") if e], served_model=args.served_model)
    if args.format == "json":
        _print_json(rep.to_dict())
    else:
        print_reproduction(rep, console, args.format)
    # Non-zero when a move exceeds the tolerance, so CI can gate on a result reproducing.
    return 0 if rep.ok else 1


def cmd_gaming(args) -> int:
    from harness.baselines.gaming import run_gaming

    task_id = Path(args.task).name if Path(args.task).exists() else args.task
    entries, text = run_gaming(
        args.task, Path(args.submissions or f"submissions/gaming/{task_id}"), Path(args.results),
        Path(args.output) if args.output else None, backend=args.backend, device=args.device,
        overrides=args.override, endpoints=[e for e in (args.endpoints or "").split(",") if e],
        served_model=args.served_model, fresh=args.fresh)
    write_out(text + "\n")
    # Non-zero when an adversarial submission beats the control: usable as a CI gate.
    return 1 if any(e.above_control for e in entries if e.method.startswith("gaming-")) else 0


def cmd_check_simulator(args) -> int:
    from harness.simulator_check import run_check

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
    _say(f"simulator check: {'passed' if ok else 'FAILED'} ({sum(r.passed for r in results)}/{len(results)})")
    # Non-zero when a check fails, so a script can gate a simulator on it.
    return 0 if ok else 1


def cmd_oracle(args) -> int:
    from harness.oracle import run_oracle, table_rows
    from harness.report.format import interval
    from harness.report.write import portable_command
    from harness.terminal import Column, print_table

    levels = None
    if args.levels is not None:
        try:
            levels = [float(x) for x in args.levels.split(",") if x.strip()]
        except ValueError:
            raise HarnessError(f"--levels {args.levels!r}: give comma-separated AUROCs in (0.5, 1], e.g. "
                               "0.6,0.7,0.8,0.9,0.95,1.0") from None
    report, path = run_oracle(args.task, levels, seed=args.seed, results_dir=Path(args.results),
                              output=Path(args.output) if args.output else None, device=args.device,
                              overrides=args.override, command="harness " + portable_command(sys.argv[1:]))
    if args.format == "json":
        from harness.result import to_jsonable

        _print_json(to_jsonable(report.to_dict()))
        return 0
    rows = table_rows(report)
    title = (f"noisy oracle on {report.task.id}: {report.n_latents} latents, {report.n_test} test contexts; "
             f"latent_zero - coder {interval(report.recovery_denominator)} nats")
    print_table(console, (Column("form", key=True), Column("a", key=True), Column("AUROC", numeric=True),
                          Column("recovery"), Column("sim - zero (nats)")),
                [r[:5] for r in rows], title=title, fmt=args.format)
    print_table(console, (Column("form", key=True), Column("a", key=True), Column("sensitivity"),
                          Column("specificity")), [r[:2] + r[5:] for r in rows], fmt=args.format)
    _say(f"{report.n_latents_unfired_in_calibration} of {report.n_latents} latents never fire on the "
         f"{report.n_calibration} calibration contexts (no calibrated value of theirs can be non-zero)")
    for d in report.diagnostics:
        _say(f"graded a=1, calibration {d.calibration}: recovery {interval(d.recovery)}")
    _say(f"oracle: {one_line(str(path))} ({report.provenance.wall_seconds:.0f} s)")
    return 0


def cmd_site(args) -> int:
    from harness.report.site import build_site

    index = build_site(Path(args.output), Path(args.results), args.task, console=console, warn=_note)
    _say(f"site: {index.resolve()}")
    return 0


def cmd_failures(args) -> int:
    from harness.report.failures import (
        explanations_of,
        latent_report,
        load_decoder,
        load_with_side,
        print_report,
        task_spec,
        test_windows,
    )

    loaded = load_with_side(args.result)
    if args.latent not in loaded.latents:
        # Checked before the tokenizer loads: a wrong latent number answers at once.
        latent_report(loaded, args.latent)
    spec, why = task_spec(loaded.result.task.id, args.task)
    expl, enote = explanations_of(loaded.result, spec) if spec is not None else (None, why)
    decode, dnote = load_decoder(spec) if spec is not None else (None, why)
    windows, wnote = test_windows(loaded, spec)
    rep = latent_report(loaded, args.latent, explanations=expl, explanation_note=enote, windows=windows,
                        decode=decode, text_note=wnote or dnote, n=args.n)
    print_report(rep, loaded, console)
    return 0


BACKENDS = allowed(Backend)
_BACKEND_HELP = ("simulator engine: prefix (transformers, one shared KV prefix per context), plain (one full "
                 "forward per prediction: the reference), vllm (in-process vLLM), http (OpenAI-compatible "
                 "servers, see --endpoints); auto (the default): the engine measured fastest on this machine "
                 "among those installed (prefix, and vllm where it imports), timed once and cached")


def _task(p, required=True, help="a registered task id (see `harness tasks`), a task folder or its task.toml"):
    p.add_argument("--task", required=required, metavar="ID|PATH", help=help)


def _submission(p, required=True, help="submission JSON file (docs/submission-format.md)"):
    p.add_argument("--submission", required=required, metavar="FILE", help=help)


def _results(p, default="results"):
    p.add_argument("--results", default=default, metavar="DIR", help=f"results folder (default: {default})")


def _leaderboard(p):
    p.add_argument("--leaderboard", nargs="?", const="leaderboard", metavar="DIR",
                   help="also write the leaderboard page DIR/<task>.md (DIR default: leaderboard); "
                        "without this flag no page is written")


def _output(p, help):
    p.add_argument("-o", "--output", required=True, metavar="PATH", help=help)


def _backend(p, choices=BACKENDS, help=_BACKEND_HELP):
    p.add_argument("--backend", default="auto", choices=choices, help=help)


def _device(p):
    p.add_argument("--device", default="auto", help="torch device: auto (cuda when available, else cpu), cpu, "
                                                    "cuda, cuda:N or mps")


def _servers(p):
    p.add_argument("--endpoints", metavar="URL[,URL...]",
                   help="http backend: comma-separated OpenAI-compatible server URLs")
    p.add_argument("--served-model", default="", metavar="NAME",
                   help="http backend: the model name the servers serve (default: the task's simulator)")


def _format(p, choices):
    p.add_argument("--format", choices=choices, default="auto",
                   help="auto (default): a table sized to the terminal, Markdown when output is not a terminal; "
                        "rich: the terminal table; md: Markdown; json: a list of objects with every column"
                        + ("; csv, html: for files" if "csv" in choices else ""))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description=__doc__, epilog=VOCABULARY + "\n\n" + ENVIRONMENT,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def verb(name: str, help: str, fn: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        s.set_defaults(fn=fn)
        return s

    # Grouped by what the verbs do; the order of the groups is the order `--help` lists them in.
    for add in (_scoring_verbs, _submission_verbs, _checking_verbs, _page_verbs):
        add(verb)
    return p


_Verb = Callable[[str, str, Callable[[argparse.Namespace], int]], argparse.ArgumentParser]


def _scoring_verbs(verb: _Verb) -> None:
    """Tasks, their preparation, scoring and the leaderboard."""
    s = verb("tasks", "list registered tasks with their hashes", cmd_tasks)
    s.add_argument("--dir", metavar="DIR", help="tasks folder (default: the repo's tasks/ or $HARNESS_TASKS_DIR)")
    _format(s, ("auto", "rich", "md", "json"))

    _new_task_verb(verb)

    s = verb("prepare", "build and cache a task's splits, true activations and baseline CE", cmd_prepare)
    _task(s)
    _device(s)
    _overrides(s)

    s = verb("eval", "score a submission on a task: writes a result under --results and prints the leaderboard",
             cmd_eval)
    _task(s)
    _submission(s)
    _backend(s)
    _device(s)
    _servers(s)
    _results(s)
    _leaderboard(s)
    s.add_argument("--cascade", metavar="SPEC", help=CASCADE_HELP)
    _overrides(s)

    s = verb("leaderboard", "a task's ranked leaderboard, built from result files", cmd_leaderboard)
    _task(s, required=False, help="one task (id, folder or task.toml); default: every registered task")
    _results(s)
    _leaderboard(s)
    _format(s, ("auto", "rich", "md", "csv", "html", "json"))

    s = verb("validate", "check a submission file against a task", cmd_validate)
    _task(s)
    _submission(s)
    _overrides(s)


def _new_task_verb(verb: _Verb) -> None:
    from harness.task.new import CONTEXT_KEYS, DEFAULT_LIKE

    s = verb("new-task", "write a task folder for your own coder: subject, coder (sparsify or SAELens), hookpoint, "
             "corpus, split sizes; prints its estimate", cmd_new_task)
    s.add_argument("-o", "--output", required=True, metavar="DIR", help="the task folder to write (new or empty)")
    s.add_argument("--id", required=True, help="the task id (names results/<id>/ and the cache)")
    s.add_argument("--subject", required=True, metavar="SRC",
                   help="the model: a transformers folder, hub:ORG/NAME@COMMIT or gguf:PACKAGE/FILE")
    s.add_argument("--coder", required=True, metavar="SRC", help="a sparsify or SAELens folder, "
                   "hub:REPO@COMMIT/SUBFOLDER, or saelens:RELEASE/SAE_ID (needs the sae-lens package)")
    s.add_argument("--corpus", required=True, metavar="SRC", help="a .npz of tokens, a .txt/.jsonl text file, or "
                   "hub:DATASET@COMMIT[:split][#text_field]")
    s.add_argument("--hookpoint", default="", help="module path, e.g. layers.8 or layers.6.mlp (default: from the "
                   "coder: a SAELens cfg's hook, a sparsify folder's name)")
    s.add_argument("--kind", default="", choices=["", "transcoder", "sae"], help="default: from the coder")
    s.add_argument("--k", type=int, default=0, help="a ReLU/JumpReLU coder: the most latents stored per token "
                   "(prepare says how many tokens exceed it); a TopK coder has its own")
    s.add_argument("--description", default="")
    s.add_argument("--subject-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--corpus-offset", type=int, default=0, help="a token file: skip this many tokens (e.g. the "
                   "part the coder was trained on)")
    s.add_argument("--corpus-files", default="", help="a hub corpus: the one file of the dataset to read")
    s.add_argument("--rewritten", default="all", help="all (default), N (random alive latents) or "
                   "N:rule[:min_fire_rate] (random-alive, most-frequent, stratified, lexical)")
    s.add_argument("--like", default=DEFAULT_LIKE, metavar="TASK",
                   help=f"the task whose simulator, scoring and split sizes are copied (default: {DEFAULT_LIKE})")
    for key in CONTEXT_KEYS:
        s.add_argument(f"--{key.replace('_', '-')}" if key != "T" else "--T", type=int, dest=f"ctx_{key}",
                       metavar="N", help=argparse.SUPPRESS if key == "seed" else f"[contexts] {key}")
    s.add_argument("--cascade", metavar="SPEC", help="the cascade the task fixes ('' for exhaustive; default: the "
                   "template's)")
    s.add_argument("--rank-by", choices=list(allowed(RankMetric)), help="default: the template's")


def cmd_new_task(args) -> int:
    from harness.report.write import portable_command
    from harness.simulate.cost import print_estimate
    from harness.task.new import CONTEXT_KEYS, NewTask, write_task

    ctx = {key: getattr(args, f"ctx_{key}") for key in CONTEXT_KEYS if getattr(args, f"ctx_{key}") is not None}
    path = write_task(NewTask(
        out=Path(args.output), id=args.id, subject=args.subject, coder=args.coder, corpus=args.corpus,
        hookpoint=args.hookpoint, kind=args.kind, k=args.k, description=args.description,
        subject_dtype=args.subject_dtype, corpus_offset=args.corpus_offset, corpus_files=args.corpus_files,
        rewritten=args.rewritten, like=args.like, contexts=ctx, cascade=args.cascade, rank_by=args.rank_by,
        command="harness " + portable_command(sys.argv[1:])))
    _say(f"wrote {one_line(str(path))}")
    print_estimate(str(path), console=console)
    return 0


def _submission_verbs(verb: _Verb) -> None:
    """Making, estimating and judging submissions."""
    s = verb("import-delphi", "turn a folder of Delphi explanation files into a submission", cmd_import_delphi)
    s.add_argument("--delphi", required=True, metavar="DIR", help="folder of Delphi explanation files")
    _task(s, help="the task the submission is for (its id)")
    s.add_argument("--method", default="delphi", help="method name recorded in the submission (default: delphi)")
    s.add_argument("--description", default="imported from Delphi explanation files")
    s.add_argument("--hookpoint", help="hookpoint whose files to take (default: the task's)")
    _output(s, "submission JSON file to write")

    s = verb("import-neuronpedia", "turn Neuronpedia explanation exports into a submission (one per latent, "
             "by a stated rule)", cmd_import_neuronpedia)
    s.add_argument("--neuronpedia", required=True, nargs="+", metavar="PATH",
                   help="export files or folders: batch-N.jsonl[.gz] (dataset export), a JSON array of explanations, "
                        "or /api/feature JSON")
    _task(s, help="the task the submission is for (its id or folder)")
    s.add_argument("--source", metavar="MODEL/LAYER", help="which SAE's explanations, e.g. gpt2-small/6-res-jb "
                   "(needed when the files hold several)")
    s.add_argument("--explainer", metavar="NAME", help="keep only explanations by this explainer model "
                   "(explanationModelName, e.g. gpt-4o-mini)")
    s.add_argument("--choose", default="newest", choices=["newest", "first", "score"],
                   help="which explanation of a latent to keep: newest (createdAt; default), first (reading order), "
                        "score (highest --score-type score; per-feature API files)")
    s.add_argument("--score-type", metavar="NAME", help="with --choose score: the score type to compare (e.g. "
                   "recall_alt); the chosen scores become the submission's scores")
    s.add_argument("--method", default="neuronpedia", help="method name recorded in the submission")
    s.add_argument("--description", default="", help="recorded in the submission (default: the source and rule)")
    _output(s, "submission JSON file to write")

    s = verb("explain", "write a baseline submission (top-tokens, llm, empty, shuffled)", cmd_explain)
    _task(s)
    s.add_argument("--method", required=True, choices=["top-tokens", "llm", "empty", "shuffled"])
    _submission(s, required=False, help="for shuffled: the submission whose explanations are permuted")
    s.add_argument("--seed", type=int, default=0)
    _device(s)
    _output(s, "submission JSON file to write")
    _overrides(s)

    s = verb("estimate", "number of predictions and projected time, before running anything", cmd_estimate)
    _task(s)
    _backend(s, ("auto", "plain", "prefix", "vllm"),
             "show the measured throughput of this engine only (default auto: every measured engine)")
    s.add_argument("--cascade", metavar="SPEC", help=CASCADE_HELP)
    _submission(s, required=False, help="with a cascade: count its predictions for this submission exactly, as its "
                "eval will select them (prepares the task first if needed: minutes)")
    _overrides(s)

    s = verb("findings", "check the paper's qualitative findings on a task's result files", cmd_findings)
    _task(s)
    s.add_argument("--real", default="top-tokens", metavar="METHOD", help="method of the real explanation set")
    s.add_argument("--control", default="shuffled-top-tokens", metavar="METHOD", help="method of its shuffled control")
    _results(s)

    s = verb("gaming", "adversarial submissions vs the shuffled control (exit 1 if one beats it)", cmd_gaming)
    _task(s)
    s.add_argument("--submissions", metavar="DIR",
                   help="folder the suite's submissions are written to (default: submissions/gaming/<task>)")
    _results(s, "gaming-results")
    s.add_argument("-o", "--output", metavar="FILE",
                   help="also write the Markdown report to FILE, e.g. docs/gaming-<task>.md")
    s.add_argument("--fresh", action="store_true",
                   help="evaluate every submission again; by default one whose result the results folder already "
                        "holds (same task hash, submission and simulator, and verify-result passes) is reused, so "
                        "a suite cut short resumes from its committed results")
    _backend(s)
    _device(s)
    _servers(s)
    _overrides(s)


def _checking_verbs(verb: _Verb) -> None:
    """Checking results and the simulator against independent computations."""
    from harness.report.reproduce import DEFAULT_SAMPLE

    s = verb("verify-result", "recompute every number of result files from their side files (exit 0 all match, "
             "1 a number differs, 3 side file too old to recompute some)", cmd_verify_result)
    s.add_argument("result_files", nargs="+", metavar="RESULT.json", help="result files (a shell glob works)")

    s = verb("reproduce", "re-simulate a seeded sample of a result's stored predictions here (no prediction "
             "store) and compare: exit 0 within tolerance, 1 beyond", cmd_reproduce)
    s.add_argument("--result", required=True, metavar="FILE", help="a result file, results/<task>/<tag>.json")
    s.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, metavar="N",
                   help=f"predictions to re-simulate, stratified over calibration, test and detection pairs "
                        f"(default {DEFAULT_SAMPLE})")
    s.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    _task(s, required=False, help="the task folder, for a task that is not registered under tasks/")
    _submission(s, required=False, help="the submission the result scored, when it is no longer at the path the "
                                        "result records (its sha256 must match)")
    s.add_argument("--backend", choices=BACKENDS, metavar="{" + ",".join(BACKENDS) + "}",
                   help=_BACKEND_HELP.replace("auto (the default): the", "auto: the")
                   + "; default: the engine the result records")
    _device(s)
    _servers(s)
    s.add_argument("--format", choices=("auto", "rich", "md", "json"), default="auto",
                   help="auto (default): tables sized to the terminal, Markdown when output is not a terminal; "
                        "rich, md: that layout; json: one object with every number and each sampled pair")

    s = verb("check-simulator", "does the task's simulator read explanations? three tests, pass/fail "
             "(exit 1 if one fails)", cmd_check_simulator)
    _task(s)
    _submission(s, required=False,
                help="explanations for real-vs-shuffled (default: submissions/<task>/top-tokens.json)")
    s.add_argument("--only", metavar="TEST[,TEST...]",
                   help="comma-separated subset of hand-written,named-token,real-vs-shuffled")
    _backend(s, ("auto", "plain", "prefix", "vllm"), _BACKEND_HELP.replace(", http (OpenAI-compatible servers, "
                                                                          "see --endpoints)", ""))
    _device(s)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-v", "--verbose", action="store_true", help="one line per case, token and latent")
    _overrides(s)

    s = verb("oracle", "the noisy-oracle reference: a simulator reading the true activations, degraded to target "
             "detection AUROCs, scored through the task's calibration and patching", cmd_oracle)
    _task(s)
    s.add_argument("--levels", metavar="A[,A...]",
                   help="target detection AUROCs in (0.5, 1] (default: 0.6,0.7,0.8,0.9,0.95,1.0)")
    s.add_argument("--seed", type=int, default=0, help="seed of the oracle's noise (default 0)")
    _results(s)
    s.add_argument("-o", "--output", metavar="DIR",
                   help="folder to write oracle.json and oracle.png into (default: <results>/<task id>)")
    _device(s)
    _format(s, ("auto", "rich", "md", "json"))
    _overrides(s)


def _page_verbs(verb: _Verb) -> None:
    """Pages for people, and the tiny task for smoke runs."""
    s = verb("site", "build the static leaderboard site with per-latent failure pages", cmd_site)
    _task(s, required=False, help="one task (id, folder or task.toml); default: every registered task")
    _results(s)
    _output(s, "folder to write the site into")

    s = verb("failures", "a latent's top false-positive and false-negative test contexts", cmd_failures)
    s.add_argument("--result", required=True, metavar="FILE", help="a result file, results/<task>/<tag>.json")
    s.add_argument("--latent", type=int, required=True)
    _task(s, required=False, help="the task folder, for a task that is not registered under tasks/")
    s.add_argument("-n", type=int, default=5, help="contexts per table (default 5)")

    s = verb("make-tiny-task", "build a tiny random task (for smoke runs and tests)", cmd_make_tiny_task)
    _output(s, "folder to write the task into")
    s.add_argument("--task", default="tiny-llama-transcoder", metavar="ID", help="the new task's id")
    s.add_argument("--arch", choices=["llama", "gpt_neox"], default="llama")
    s.add_argument("--kind", choices=["transcoder", "sae"], default="transcoder")
    s.add_argument("--seed", type=int, default=0)


# One name per thing, in every verb (also printed by `harness --help`).
VOCABULARY = """\
flags mean the same thing in every command:
  --task ID|PATH       a registered task id, a task folder or its task.toml
  --submission FILE    a submission JSON (the file `eval` scores, `validate` checks)
  --results DIR        the results folder (read by leaderboard, findings, site; written by eval, oracle,
                       and gaming: its own, gaming-results/ by default)
  --leaderboard [DIR]  also write the leaderboard page DIR/<task>.md (eval, leaderboard); opt-in
  -o, --output PATH    the file or folder a command writes
  --format FORMAT      auto (terminal table, Markdown when piped), rich, md, json, ..."""

ENVIRONMENT = """\
environment variables:
  HARNESS_CACHE        prepared tasks, converted models and the prediction store (default ~/.cache/harness)
  HARNESS_TASKS_DIR    where registered task ids are looked up (default: the repo's tasks/)
  HARNESS_THREADS      torch threads per process (default: torch's choice)
  HARNESS_BATCH        contexts per forward pass of the subject model (default 32)"""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        parser = build_parser()
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
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
        safe_console(stderr=True).print("interrupted: finished work is cached; rerun the same command to resume")
        return 130


def _error(e: HarnessError) -> int:
    # one_line: a message quoting user text (a newline in a method name, a lone surrogate) stays one line.
    safe_console(stderr=True, highlight=False, soft_wrap=True).print(
        Text.assemble(("error:", "bold red"), " ", one_line(str(e))))
    return 2


if __name__ == "__main__":
    sys.exit(main())
