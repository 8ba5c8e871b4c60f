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


def test_pairs_per_context_of_a_row():
    """Rows say how many pairs per context their workload had; rows written before the field existed say it in
    their workload text."""
    assert estimate.pairs_per_context({"per_context": 4}) == 4
    assert estimate.pairs_per_context({"workload": "8 contexts x 16 explanations = 128 predictions; T=32"}) == 16
    assert estimate.pairs_per_context({"workload": "something else"}) is None


def _row(backend, n, rate, **kw):
    return {"backend": backend, "model": "m", "device": "cpu", "cpu": "c", "predictions_per_s": rate,
            "per_context": n, **kw}


def test_seconds_per_prediction_interpolated_in_one_over_pairs_per_context():
    """A sharing engine measured at several pair counts: linear in 1/n between its rows (the mean where rows share
    an n), held beyond them; an engine that shares nothing is flat at its rows' mean."""
    rows = [_row("prefix", 1, 1 / 1.2), _row("prefix", 4, 1 / 0.8), _row("prefix", 4, 1 / 0.6),
            _row("prefix", 32, 1 / 0.5)]
    (t,) = estimate.fit_throughputs(rows)
    assert 1 / t.rate(4) == pytest.approx(0.7)                       # the two n = 4 rows' mean
    # n = 2: x = 0.5, between (0.25, 0.7) and (1, 1.2): 0.7 + (0.25 / 0.75) * 0.5
    assert 1 / t.rate(2) == pytest.approx(0.7 + 0.5 / 3)
    assert 1 / t.rate(128) == pytest.approx(0.5) == 1 / t.rate(32)  # held past the largest n measured
    assert 1 / t.rate(1) == pytest.approx(1.2)
    (t,) = estimate.fit_throughputs([_row("plain", 1, 0.5), _row("plain", 4, 0.25)])
    assert 1 / t.rate(1) == 1 / t.rate(100) == pytest.approx((2 + 4) / 2)


def test_one_row_is_split_by_its_token_counts():
    """One row at n pairs per context: seconds = c (suffix tokens + context tokens / n), the context's own tokens
    being the prefix less the cached head, with c such that the row's own rate comes back."""
    w = "24 contexts x 4 of 32 explanations each = 96 predictions; T=32; prompt 143-166 tokens (mean 159): " \
        "head 99, prefix mean 139, suffix mean 20; plain timed on 12 pairs"
    (t,) = estimate.fit_throughputs([_row("prefix", 4, 2.0, workload=w)])
    c = 0.5 / (20 + 40 / 4)
    assert t.rate(4) == pytest.approx(2.0)
    assert 1 / t.rate(1) == pytest.approx(c * 60) and 1 / t.rate(8) == pytest.approx(c * 25)
    (t,) = estimate.fit_throughputs([_row("prefix", 4, 2.0)])      # no token counts: flat
    assert t.rate(1) == pytest.approx(2.0) == t.rate(64)


def test_each_split_priced_at_its_own_pairs_per_context(tmp_path, monkeypatch):
    """Detection contexts hold one pair each; exhaustive calibration and test share a context among all m
    latents. The projected time is the sum over splits, by hand."""
    f = tmp_path / "throughput.json"
    f.write_text(json.dumps({"measurements": [_row("prefix", 1, 1 / 1.3), _row("prefix", 32, 1 / 0.5)]}))
    monkeypatch.setattr(estimate, "THROUGHPUT_FILE", f)
    spec = load_task("smollm2-135m-l8-offline-mini")
    cost = estimate.prediction_cost(spec)
    m = cost.latents   # 16: between the rows, x = 1/16
    secs = (cost.calibration + cost.test) * (0.5 + (1 / 16 - 1 / 32) / (1 - 1 / 32) * 0.8) + cost.detection * 1.3
    console = Console(record=True, width=250)
    estimate.print_estimate("smollm2-135m-l8-offline-mini", "prefix", overrides=['simulator.cascade=""'],
                            console=console)
    text = console.export_text()
    assert estimate._hms(secs) in text.split("projected")[1]
    assert f"calibration {m}, test {m}, detection 1" in " ".join(text.split())
