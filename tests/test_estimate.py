"""`harness estimate`: prediction counts from the spec alone (offline) and projected time from measurements."""

import json

import pytest
from rich.console import Console

from harness.simulate import cost as estimate
from harness.errors import HarnessError
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
