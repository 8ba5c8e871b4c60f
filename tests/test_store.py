"""Prediction store: round trips, concurrent writers, and resuming an interrupted run."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import numpy as np
import pytest

from harness.simulate.base import SimContext, explanation_sha
from harness.simulate.store import CachedSimulator, PredictionStore


def _probs_for(key: str) -> np.ndarray:
    seed = int.from_bytes(key.encode()[:8].ljust(8, b"\0"), "little") % (2**32)
    p = np.random.default_rng(seed).random(10).astype(np.float32) + 0.01
    return p / p.sum()


class FakeSimulator:
    """Deterministic per (context id, explanation); records what it was asked; can fail after N calls."""

    name = "fake"
    model_key = "fake-model"
    prompt_version = "v1"

    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after
        self.calls: list[list[tuple[int, int]]] = []

    def predict(self, contexts, explanations, pairs, progress=None):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        pairs = [tuple(map(int, p)) for p in pairs]
        self.calls.append(pairs)
        probs = np.stack([_probs_for(contexts[c].context_id + "|" + explanations[e]) for c, e in pairs])
        mass = np.array([0.5 + 0.01 * c for c, _ in pairs], np.float32)
        return probs, mass


def _data(n_ctx=23, n_exp=17):
    contexts = [SimContext(f"c{i}", f"text {i}", " tok") for i in range(n_ctx)]
    explanations = [f"explanation number {j}" for j in range(n_exp)]
    rng = np.random.default_rng(1)
    pairs = [(c, e) for c in range(n_ctx) for e in range(n_exp)]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    return contexts, explanations, pairs


def test_round_trip_and_first_write_wins(tmp_path):
    store = PredictionStore(tmp_path / "s" / "p.sqlite")
    p1, p2 = _probs_for("a"), _probs_for("b")
    store.put_many("m", "v1", [("e1", "c1", p1, 0.9), ("e1", "c2", p2, 0.8)])
    store.put_many("m", "v1", [("e1", "c1", p2, 0.1)])           # ignored: already there
    got = store.get_many("m", "v1", [("e1", "c1"), ("e1", "c2"), ("e1", "missing"), ("e2", "c1")])
    assert set(got) == {("e1", "c1"), ("e1", "c2")}
    assert np.array_equal(got[("e1", "c1")][0], p1) and got[("e1", "c1")][1] == pytest.approx(0.9)
    assert got[("e1", "c1")][0].dtype == np.float32
    assert store.get_many("other-model", "v1", [("e1", "c1")]) == {}
    assert store.get_many("m", "v2", [("e1", "c1")]) == {}
    with pytest.raises(ValueError):
        store.put_many("m", "v1", [("e", "c", np.zeros(9), 1.0)])
    con = sqlite3.connect(tmp_path / "s" / "p.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_many_keys_are_chunked(tmp_path):
    store = PredictionStore(tmp_path / "p.sqlite")
    rows = [(f"e{i % 3}", f"c{i}", _probs_for(str(i)), float(i)) for i in range(2500)]
    store.put_many("m", "v1", rows)
    got = store.get_many("m", "v1", [(e, c) for e, c, _, _ in rows] + [("e0", "nope")])
    assert len(got) == 2500 and store.count("m", "v1") == 2500
    assert all(got[(e, c)][1] == m for e, c, _, m in rows)


def _writer(path: str, worker: int, n_keys: int) -> None:
    store = PredictionStore(path, timeout_s=60)
    rng = np.random.default_rng(worker)
    # Overlapping key ranges, small transactions, in a different order per worker.
    keys = list(range(worker * n_keys // 2, worker * n_keys // 2 + n_keys))
    rng.shuffle(keys)
    for start in range(0, len(keys), 25):
        store.put_many("m", "v1", [(f"e{k % 7}", f"c{k}", np.full(10, worker, np.float32), float(worker))
                                   for k in keys[start:start + 25]])


def test_concurrent_writers_leave_consistent_db(tmp_path):
    path = str(tmp_path / "p.sqlite")
    PredictionStore(path)
    n_keys, workers = 300, 4
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, n_keys)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    all_keys = set()
    for w in range(workers):
        all_keys.update(range(w * n_keys // 2, w * n_keys // 2 + n_keys))
    store = PredictionStore(path)
    assert store.count() == len(all_keys)
    got = store.get_many("m", "v1", [(f"e{k % 7}", f"c{k}") for k in all_keys])
    assert len(got) == len(all_keys)
    for probs, mass in got.values():
        # Each row is one writer's row, whole: never a mix of two.
        assert np.all(probs == mass) and 0 <= mass < workers
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_interrupted_run_resumes_without_recomputing(tmp_path):
    contexts, explanations, pairs = _data()
    chunk = 40

    reference = CachedSimulator(FakeSimulator(), PredictionStore(tmp_path / "ref.sqlite"), chunk_size=chunk)
    ref_p, ref_m = reference.predict(contexts, explanations, pairs)
    assert reference.n_computed == len(pairs) and reference.n_cached == 0

    store = PredictionStore(tmp_path / "p.sqlite")
    killed = CachedSimulator(FakeSimulator(fail_after=3), store, chunk_size=chunk)
    with pytest.raises(KeyboardInterrupt):
        killed.predict(contexts, explanations, pairs)
    assert killed.n_computed == 3 * chunk and store.count() == 3 * chunk

    inner = FakeSimulator()
    resumed = CachedSimulator(inner, store, chunk_size=chunk)
    p, m = resumed.predict(contexts, explanations, pairs)
    assert np.array_equal(p, ref_p) and np.array_equal(m, ref_m)
    assert resumed.n_cached == 3 * chunk and resumed.n_computed == len(pairs) - 3 * chunk
    asked = [pr for call in inner.calls for pr in call]
    assert len(asked) == len(set(asked)) == len(pairs) - 3 * chunk
    assert all(len(call) <= chunk for call in inner.calls)

    # A third run computes nothing.
    again = CachedSimulator(FakeSimulator(fail_after=0), store, chunk_size=chunk)
    p2, _ = again.predict(contexts, explanations, pairs)
    assert np.array_equal(p2, ref_p) and again.n_computed == 0 and again.n_cached == len(pairs)


def test_duplicates_computed_once_and_order_kept(tmp_path):
    contexts, explanations, _ = _data(5, 4)
    pairs = [(3, 1), (0, 0), (3, 1), (4, 3), (0, 0), (2, 2)]
    inner = FakeSimulator()
    sim = CachedSimulator(inner, PredictionStore(tmp_path / "p.sqlite"), chunk_size=2)
    done = []
    p, _ = sim.predict(contexts, explanations, pairs, progress=done.append)
    assert sim.n_computed == 4 and sum(done) == len(pairs)
    for row, (c, e) in enumerate(pairs):
        assert np.array_equal(p[row], _probs_for(contexts[c].context_id + "|" + explanations[e]))
    # Missing pairs are computed grouped by context, so shared prefixes stay together.
    asked = [pr for call in inner.calls for pr in call]
    assert asked == sorted(asked)


def test_store_keys_on_explanation_text(tmp_path):
    contexts, _, _ = _data(2, 1)
    store = PredictionStore(tmp_path / "p.sqlite")
    sim = CachedSimulator(FakeSimulator(), store)
    sim.predict(contexts, ["same words"], [(0, 0), (1, 0)])
    sim2 = CachedSimulator(FakeSimulator(), store)
    sim2.predict(contexts, ["unrelated", "same words"], [(0, 1), (1, 1), (0, 0)])
    assert sim2.n_cached == 2 and sim2.n_computed == 1
    assert set(store.get_many("fake-model", "v1", [(explanation_sha("same words"), "c0")]))
