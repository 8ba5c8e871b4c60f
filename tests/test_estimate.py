"""`harness estimate`: prediction counts from the spec alone (offline) and projected time from measurements."""

import json

import pytest
from rich.console import Console

from harness.errors import HarnessError
from harness.simulate import cost as estimate
from harness.task.spec import load_task


def test_paper_task_cost_by_hand():
    spec = load_task("pythia160m-l6-transcoder")
    cost = estimate.prediction_cost(spec)
    # 32768 latents × (10,000 calibration + 10,000 test + 100 + 100 detection contexts)
    assert cost.latents == 32768
    assert cost.total == 32768 * (10_000 + 10_000 + 200) == 661_913_600


def test_projection_uses_measured_throughput(tmp_path, monkeypatch):
    f = tmp_path / "throughput.json"
    f.write_text(json.dumps({"measurements": [
        {"backend": "prefix", "model": "m", "device": "cpu", "predictions_per_s": 100.0},
        {"backend": "plain", "model": "m", "device": "cpu", "predictions_per_s": 10.0}]}))
    monkeypatch.setattr(estimate, "THROUGHPUT_FILE", f)
    console = Console(record=True, width=200)
    cost = estimate.print_estimate("pythia160m-l6-transcoder-lite", "prefix", console=console)
    text = console.export_text()
    secs = cost.total / 100.0
    assert estimate._hms(secs) in text and "plain" not in text.split("projected")[1]


def test_missing_measurement_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(estimate, "THROUGHPUT_FILE", tmp_path / "none.json")
    with pytest.raises(HarnessError, match="benchmarks/simulate.py"):
        estimate.print_estimate("pythia160m-l6-sae-lite", "prefix", console=Console(file=open("/dev/null", "w")))


def test_rows_measured_on_this_cpu_come_first_and_are_marked(tmp_path, monkeypatch):
    here = "Some CPU (family 1 model 2, AVX2, KVM guest)"
    monkeypatch.setattr(estimate, "cpu_description", lambda: here)
    f = tmp_path / "throughput.json"
    f.write_text(json.dumps({"measurements": [
        {"backend": "prefix", "model": "fast", "device": "cpu", "predictions_per_s": 100.0,
         "cpu": "Intel(R) Xeon(R) Processor (family 6 model 207, AVX-512, AMX-BF16, KVM guest)"},
        {"backend": "prefix", "model": "slow", "device": "cpu", "predictions_per_s": 1.0, "cpu": here}]}))
    monkeypatch.setattr(estimate, "THROUGHPUT_FILE", f)
    console = Console(record=True, width=250)
    estimate.print_estimate("pythia160m-l6-transcoder-lite", "prefix", console=console)
    table = console.export_text().split("projected")[1]
    assert table.index("* Some CPU (1/2, AVX2)") < table.index("Intel Xeon (6/207, AVX-512, AMX-BF16)")
    assert "measured on this CPU" in table
    # No row from this CPU: said so, not silently projected from another machine.
    monkeypatch.setattr(estimate, "cpu_description", lambda: "Other CPU")
    console = Console(record=True, width=250)
    estimate.print_estimate("pythia160m-l6-transcoder-lite", "prefix", console=console)
    assert "No throughput was measured on this CPU (Other CPU)" in " ".join(console.export_text().split())


def test_absurd_task_and_short_corpus_are_said(tmp_path, monkeypatch):
    import numpy as np

    f = tmp_path / "throughput.json"
    f.write_text(json.dumps({"measurements": [
        {"backend": "prefix", "model": "m", "device": "cpu", "predictions_per_s": 10.0}]}))
    monkeypatch.setattr(estimate, "THROUGHPUT_FILE", f)
    # A local token file of 3,300 tokens = 100 blocks of T+1 = 33; the mini task's splits need 1,880 blocks.
    np.savez(tmp_path / "c.npz", tokens=np.arange(3300, dtype=np.uint16))
    ovs = [f'corpus.path="{tmp_path / "c.npz"}"', "corpus.offset=0"]
    console = Console(record=True, width=200)
    estimate.print_estimate("smollm2-135m-l8-offline-mini", "prefix", overrides=ovs, console=console)
    text = " ".join(console.export_text().split())
    assert "the corpus supplies 100 blocks of T+1 = 33 tokens and the splits need 1,880" in text
    assert "even at the fastest" not in text     # 1,600 predictions at 10/s: minutes
    # The paper's task at 10 predictions/s: 662M predictions, about two years.
    console = Console(record=True, width=200)
    estimate.print_estimate("pythia160m-l6-transcoder", "prefix", console=console)
    text = " ".join(console.export_text().split())
    assert "warning: even at the fastest measured throughput this task takes" in text
    assert "corpus supplies" not in text         # a hub corpus: not known offline


def test_pairs_per_context_column():
    """Rows say how many pairs per context their workload had (a cascade's pairs run at the sparse rows' rate);
    rows written before the field existed say it in their workload text."""
    assert estimate._per_context({"per_context": 4}) == "4"
    assert estimate._per_context({"workload": "8 contexts x 16 explanations = 128 predictions; T=32"}) == "16"
    assert estimate._per_context({"workload": "something else"}) == "?"
