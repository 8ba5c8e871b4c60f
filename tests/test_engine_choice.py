"""`--backend auto` (harness/simulate/choice.py): the engine measured fastest, cached per machine and simulator."""

import json

import numpy as np
import pytest

from harness.simulate import choice as ch
from harness.simulate.base import SimContext


class Stub:
    """An engine that answers instantly and counts the pairs it was asked for."""

    def __init__(self, name):
        self.name = name
        self.model_key = "k"
        self.prompt_version = "yn3"
        self.calls = []

    def predict(self, contexts, explanations, pairs, progress=None):
        pairs = np.asarray(pairs).reshape(-1, 2)
        self.calls.append((len(contexts), len(pairs)))
        return np.full((len(pairs), 2), 0.5, np.float32), np.ones(len(pairs), np.float32)


def contexts(n):
    return [SimContext(f"c{i}", f"text {i}", " x") for i in range(n)]


def test_timed_rate_warms_up_on_the_first_context_and_times_the_rest():
    sim = Stub("prefix")
    ticks = iter([10.0, 14.0])
    rate = ch.timed_rate(sim, contexts(5), ["a", "b", "c"], clock=lambda: next(ticks))
    # warm-up: the first context, two pairs; timed: the other 4 contexts x 3 explanations in 4 s
    assert sim.calls == [(1, 2), (4, 12)]
    assert rate == pytest.approx(12 / 4.0)


def test_fastest_takes_the_highest_rate_and_breaks_ties_towards_prefix():
    assert ch.fastest({"prefix": 2.0, "vllm": 3.5}) == "vllm"
    assert ch.fastest({"prefix": 4.0, "vllm": 3.5}) == "prefix"
    assert ch.fastest({"vllm": 3.0, "prefix": 3.0}) == "prefix"


def test_installed_engines_adds_vllm_only_when_it_imports():
    assert ch.installed_engines(find=lambda name: None) == ["prefix"]
    assert ch.installed_engines(find=lambda name: object() if name == "vllm" else None) == ["prefix", "vllm"]


def test_one_engine_is_used_without_measuring(tmp_path):
    built = []
    sim, choice = ch.choose_engine(lambda n: built.append(n) or Stub(n), contexts(3), "k", "yn3", "cpu",
                                   lambda: "m", "float32", engines=["prefix"], cache=tmp_path)
    assert built == ["prefix"] and sim.name == "prefix"
    assert choice.backend == "prefix" and choice.rates == {} and "only one" in choice.describe()
    assert not (tmp_path / ch.CHOICES_FILE).exists()


def test_measured_choice_is_cached_and_recorded_for_estimate(tmp_path, monkeypatch):
    speed = {"prefix": 2.0, "vllm": 5.0}          # seconds the timed run takes: prefix is faster
    built = []
    clock = {"t": 0.0, "engine": None}

    def build(name):
        built.append(name)
        clock["engine"] = name
        return Stub(name)

    def tick():
        clock["t"] += speed[clock["engine"]]   # read at the start and the end of a timed run
        return clock["t"]

    sim, choice = ch.choose_engine(build, contexts(5), "key", "yn3", "cpu", lambda: "model-folder", "float32",
                                   engines=["prefix", "vllm"], cache=tmp_path, clock=tick)
    n = 4 * len(ch.WORKLOAD_EXPLANATIONS)
    assert built == ["prefix", "vllm"]
    assert sim.name == "prefix" and choice.backend == "prefix" and choice.reason == "measured"
    assert choice.rates == {"prefix": pytest.approx(n / 2.0, rel=1e-3), "vllm": pytest.approx(n / 5.0, rel=1e-3)}
    # The throughput rows `harness estimate` reads: one per engine, at this workload's pairs per context.
    rows = json.loads((tmp_path / ch.LOCAL_THROUGHPUT_FILE).read_text())["measurements"]
    assert [(r["backend"], r["per_context"], r["model"], r["dtype"]) for r in rows] == [
        ("prefix", len(ch.WORKLOAD_EXPLANATIONS), "model-folder", "float32"),
        ("vllm", len(ch.WORKLOAD_EXPLANATIONS), "model-folder", "float32")]
    assert rows[0]["predictions_per_s"] == pytest.approx(n / 2.0, rel=1e-3)
    # Second time: the cached choice, built alone, nothing timed.
    built.clear()
    monkeypatch.setattr(ch, "timed_rate", lambda *a: pytest.fail("a cached choice must not be measured again"))
    sim, again = ch.choose_engine(build, contexts(5), "key", "yn3", "cpu", lambda: "model-folder", "float32",
                                  engines=["prefix", "vllm"], cache=tmp_path)
    assert built == ["prefix"] and again.reason == "cached" and again.rates == choice.rates
    # Another simulator (or prompt, machine, versions) is measured afresh.
    monkeypatch.setattr(ch, "timed_rate", lambda *a: 1.0)
    built.clear()
    ch.choose_engine(build, contexts(5), "other-key", "yn3", "cpu", lambda: "m", "float32",
                     engines=["prefix", "vllm"], cache=tmp_path)
    assert built == ["prefix", "vllm"]


def test_damaged_choices_file_is_measured_again(tmp_path, monkeypatch):
    (tmp_path / ch.CHOICES_FILE).write_text("{not json")
    monkeypatch.setattr(ch, "timed_rate", lambda sim, c, e, clock: {"prefix": 1.0, "vllm": 2.0}[sim.name])
    sim, choice = ch.choose_engine(Stub, contexts(3), "k", "yn3", "cpu", lambda: "m", "float32",
                                   engines=["prefix", "vllm"], cache=tmp_path)
    assert choice.backend == "vllm" and sim.name == "vllm"
    assert json.loads((tmp_path / ch.CHOICES_FILE).read_text())["choices"]


def test_an_engine_that_cannot_run_is_left_out_and_said(tmp_path, monkeypatch):
    """vLLM refusing this simulator (as it refuses prompts past the model's context length) leaves prefix to run;
    the choice says why vLLM was left out, is cached with that, and only when no engine runs is the eval stopped."""
    from harness.errors import HarnessError

    def build(name):
        if name == "vllm":
            raise ValueError("This model's maximum context length is 512 tokens.\nmore detail")
        return Stub(name)

    monkeypatch.setattr(ch, "timed_rate", lambda *a: 3.0)
    sim, choice = ch.choose_engine(build, contexts(3), "k", "yn3", "cpu", lambda: "m", "float32",
                                   engines=["prefix", "vllm"], cache=tmp_path)
    assert sim.name == "prefix" and choice.rates == {"prefix": 3.0}
    assert choice.failed == {"vllm": "ValueError: This model's maximum context length is 512 tokens."}
    assert "prefix 3.00/s, vllm failed: ValueError: This model's maximum" in choice.describe()
    rows = json.loads((tmp_path / ch.LOCAL_THROUGHPUT_FILE).read_text())["measurements"]
    assert [r["backend"] for r in rows] == ["prefix"]
    monkeypatch.setattr(ch, "timed_rate", lambda *a: pytest.fail("a cached choice must not be measured again"))
    _, again = ch.choose_engine(build, contexts(3), "k", "yn3", "cpu", lambda: "m", "float32",
                                engines=["prefix", "vllm"], cache=tmp_path)
    assert again.reason == "cached" and again.failed == choice.failed

    def broken(name):
        raise RuntimeError(f"{name} is broken")

    with pytest.raises(HarnessError, match="no simulator engine could run here: prefix: RuntimeError: prefix is "
                                           "broken; vllm: RuntimeError: vllm is broken"):
        ch.choose_engine(broken, contexts(3), "k2", "yn3", "cpu", lambda: "m", "float32",
                         engines=["prefix", "vllm"], cache=tmp_path)


def test_eval_auto_records_its_choice_and_estimate_reads_the_rates(tiny, monkeypatch, tmp_path, capsys):
    """Two real engines on the tiny task: the result says which ran and why; the rates reach `harness estimate`."""
    import os

    from harness.cli import main
    from harness.data.prepare import prepare
    from harness.task.spec import load_task

    monkeypatch.setattr(ch, "installed_engines", lambda: ["prefix", "plain"])
    task = str(tiny / "task")
    latents = prepare(load_task(task)).rewritten
    sub = tmp_path / "s.json"
    sub.write_text(json.dumps({"task": "tiny-llama-transcoder", "method": "m", "description": "d",
                               "explanations": {str(j): "the token x" for j in latents}}))
    assert main(["eval", "--task", task, "--submission", str(sub), "--results", str(tmp_path / "r")]) == 0
    result = json.loads(next((tmp_path / "r").rglob("*.json")).read_text())
    chosen = json.loads((tiny / "cache" / ch.CHOICES_FILE).read_text())["choices"]
    (entry,) = chosen.values()
    assert set(entry["rates"]) == {"prefix", "plain"} and entry["backend"] == ch.fastest(entry["rates"])
    text = result["provenance"]["engine_choice"]
    assert text.startswith(f"{entry['backend']} (fastest measured") and "plain" in text and "prefix" in text
    assert result["simulator"]["backend"] == {"prefix": "transformers-prefix", "plain": "transformers-plain"}[
        entry["backend"]]
    capsys.readouterr()
    assert main(["estimate", "--task", task]) == 0
    out = capsys.readouterr().out
    assert "--backend auto runs" in out and "cached" in out
    rows = json.loads((tiny / "cache" / ch.LOCAL_THROUGHPUT_FILE).read_text())["measurements"]
    assert {r["backend"] for r in rows} == {"prefix", "plain"} and os.cpu_count()
    # An engine named on the command line is recorded as asked for.
    assert main(["eval", "--task", task, "--submission", str(sub), "--results", str(tmp_path / "r2"),
                 "--backend", "prefix"]) == 0
    again = json.loads(next((tmp_path / "r2").rglob("*.json")).read_text())
    assert again["provenance"]["engine_choice"] == "prefix (asked for)"
