"""Splits, detection examples, rewritten-latent rules and task specs, against direct re-computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.data.table import build_activation_table
from harness.errors import HarnessError
from harness.data.select import choose_detection, choose_rewritten, make_splits, split_sizes
from harness.task.spec import load_task, parse_task
from harness.testing.tiny import TinyTaskOptions, make_tiny_task


@pytest.fixture(scope="module")
def task_toml(tmp_path_factory) -> Path:
    return make_tiny_task(tmp_path_factory.mktemp("t") / "task", TinyTaskOptions())


def test_splits_are_disjoint_and_seeded(task_toml):
    spec = parse_task(task_toml)
    tokens = np.arange(40_000)  # token value = stream position, so a block's first token identifies it
    a = make_splits(tokens, spec)
    b = make_splits(tokens, spec)
    sizes = split_sizes(spec)
    T = spec.contexts.T
    for name, blocks in a.items():
        assert blocks.shape == (sizes[name], T + 1)
        np.testing.assert_array_equal(blocks, b[name])
        assert np.all(np.diff(blocks, axis=1) == 1)       # contiguous runs of the stream
        assert np.all(blocks[:, 0] % (T + 1) == 0)        # aligned, non-overlapping blocks
    firsts = np.concatenate([a[n][:, 0] for n in a])
    assert len(np.unique(firsts)) == len(firsts)          # no block in two splits
    other = make_splits(tokens, load_task(str(task_toml), ["contexts.seed=99"]))
    assert not np.array_equal(other["test"], a["test"])


def test_splits_too_small_corpus_errors(task_toml):
    spec = parse_task(task_toml)
    with pytest.raises(HarnessError, match="corpus has 100 tokens"):
        make_splits(np.arange(100), spec)


def test_choose_detection_against_direct_loop():
    rng = np.random.default_rng(0)
    n, span, k, L = 30, 5, 3, 12
    inds = np.stack([rng.choice(L, k, replace=False) for _ in range(n * span)]).reshape(n, span, k)
    vals = rng.random((n, span, k)).astype(np.float32)
    vals[rng.random((n, span, k)) < 0.2] = 0.0  # TopK can keep exact zeros: they are not firing
    rewritten = np.array([1, 4, 7, 11])
    pos, neg, ctx = choose_detection(vals, inds, rewritten, 4, 6, seed=3)
    flat_v, flat_i = vals.reshape(-1, k), inds.reshape(-1, k)
    for r, j in enumerate(rewritten):
        fires = np.array([bool(((flat_i[c] == j) & (flat_v[c] > 0)).any()) for c in range(n * span)])
        p, q = pos[r][pos[r] >= 0], neg[r][neg[r] >= 0]
        assert len(p) == min(4, fires.sum()) and len(q) == 6
        assert fires[p].all() and not fires[q].any()
        assert len(set(p)) == len(p) and len(set(q)) == len(q)
    assert ctx.shape == (n * span, 2) and (ctx[7] == [1, 2]).all()


def test_choose_rewritten_rules(task_toml):
    values = np.array([[1.0, 0.5], [2.0, 0.0], [1.0, 3.0], [0.5, 0.2]], np.float32)
    indices = np.array([[0, 3], [0, 5], [3, 2], [0, 3]])
    table = build_activation_table(values, indices, 8, 11)
    # firing counts: latent0: 3, latent3: 3, latent2: 1, latent5: 0 (exact zero)
    spec = load_task(str(task_toml), overrides=["latents.rewritten={count = 2, rule = \"most-frequent\"}"])
    np.testing.assert_array_equal(choose_rewritten(spec, table, 8), [0, 3])
    spec = load_task(str(task_toml), overrides=["latents.rewritten={count = 3, rule = \"random-alive\", seed = 1}"])
    np.testing.assert_array_equal(choose_rewritten(spec, table, 8), [0, 2, 3])
    spec = load_task(str(task_toml), overrides=["latents.rewritten={count = 4, rule = \"random-alive\"}"])
    with pytest.raises(HarnessError, match="only 3 fire"):
        choose_rewritten(spec, table, 8)
    # A firing-rate floor: rates are 3/4 (latents 0, 3) and 1/4 (latent 2); a floor of 0.5 leaves two.
    spec = load_task(str(task_toml), overrides=["latents.rewritten={count = 2, rule = \"random-alive\", min_fire_rate = 0.5}"])
    np.testing.assert_array_equal(choose_rewritten(spec, table, 8), [0, 3])
    spec = load_task(str(task_toml), overrides=["latents.rewritten={count = 3, rule = \"stratified\", min_fire_rate = 0.5}"])
    with pytest.raises(HarnessError, match="only 2 fire at a rate of at least 0.5"):
        choose_rewritten(spec, table, 8)
    with pytest.raises(HarnessError, match="min_fire_rate must be a number in"):
        load_task(str(task_toml), overrides=["latents.rewritten={count = 2, rule = \"stratified\", min_fire_rate = 1.5}"])


def test_min_fire_rate_enters_the_hash_only_when_set(task_toml):
    base = load_task(str(task_toml), overrides=["latents.rewritten={count = 2, rule = \"stratified\"}"])
    zero = load_task(str(task_toml), overrides=["latents.rewritten={count = 2, rule = \"stratified\", min_fire_rate = 0.0}"])
    floor = load_task(str(task_toml), overrides=["latents.rewritten={count = 2, rule = \"stratified\", min_fire_rate = 0.01}"])
    assert base.hash == zero.hash != floor.hash


def test_task_hash_tracks_numbers_not_prose(task_toml):
    base = parse_task(task_toml)
    assert base.hash == parse_task(task_toml).hash
    assert load_task(str(task_toml), ["description=\"other words\""]).hash == base.hash
    assert load_task(str(task_toml), ["contexts.T=25"]).hash != base.hash
    assert load_task(str(task_toml), ["scoring.seed=7"]).hash != base.hash
    assert load_task(str(task_toml), ["simulator.prompt_version=\"v1\""]).hash != base.hash


@pytest.mark.parametrize("edit,needle", [
    ("contexts.T=0", "`T` must be a positive integer"),
    ("scoring.bootstrap=10", "at least 1000"),
    ("coder.kind=\"mlp\"", "kind must be transcoder or sae"),
    ("bogus.key=1", "unknown key(s) bogus"),
])
def test_spec_validation_errors(task_toml, edit, needle):
    with pytest.raises(HarnessError) as e:
        load_task(str(task_toml), [edit])
    assert needle in str(e.value) and "task.toml" in str(e.value)


def test_modified_artifact_is_rejected(task_toml, tmp_path):
    import shutil

    from harness.task.inputs import verify_artifacts

    copy = tmp_path / "task"
    shutil.copytree(task_toml.parent, copy)
    with open(copy / "corpus.npz", "ab") as f:
        f.write(b"x")
    with pytest.raises(HarnessError, match="sha256 of corpus.npz"):
        verify_artifacts(parse_task(copy / "task.toml"))


@pytest.mark.parametrize("edit,needle", [
    ('coder.source="s3"', "[coder]: source must be local or hub (got 's3')"),
    ('corpus.source="web"', "[corpus]: source must be one of local-tokens, local-text, hub (got 'web')"),
    ('scoring.detection_rule="median"', "[scoring]: detection_rule must be fire-rate or fixed (got 'median')"),
    ('scoring.rank_by="recovery"', "[scoring]: rank_by must be sim_minus_zero or detection_auroc (got 'recovery')"),
])
def test_enumerated_fields_take_their_values_from_the_literal_types(task_toml, edit, needle):
    with pytest.raises(HarnessError) as e:
        load_task(str(task_toml), [edit])
    assert needle in str(e.value)


def test_each_enumeration_is_defined_once():
    import typing

    from harness import names
    from harness.task.spec import CoderSpec, ScoringSpec

    hints = typing.get_type_hints(ScoringSpec)
    assert names.allowed(hints["rank_by"]) == ("sim_minus_zero", "detection_auroc")
    assert names.allowed(typing.get_type_hints(CoderSpec)["kind"]) == ("transcoder", "sae")
    assert names.choice_text(("a", "b", "c")) == "one of a, b, c" and names.choice_text(("a", "b")) == "a or b"


def test_cross_field_rules_live_in_the_spec_types():
    """A spec built in code obeys the same rules as one read from a file (the loader adds the file name)."""
    from harness.task.spec import CoderSpec, ContextSpec, ScoringSpec

    with pytest.raises(ValueError, match="missing key `repo`"):
        CoderSpec(source="hub", hookpoint="layers.0.mlp", kind="transcoder")
    assert CoderSpec(source="local", hookpoint="layers.0.mlp", kind="sae", path="coder").path == "coder"
    with pytest.raises(ValueError, match="`calibration` must be a positive integer"):
        ContextSpec(T=32, seed=0, activation_sample_tokens=10, calibration=0, test=1, detection_positive=1,
                    detection_negative=0)
    with pytest.raises(ValueError, match=r"`fractions` must be a list of numbers in \(0, 1\]"):
        ScoringSpec(fractions=(0.5, 1.5))


def test_prepared_cache_shared_by_simulator_and_scoring_settings(task_toml, tmp_path, monkeypatch):
    """The prepared data depend on subject, coder, corpus, contexts, latents and the quantile grid only: a task
    that differs elsewhere (simulator, prompt, cascade, bootstrap, seed) reads the same cache without running
    the subject; one that differs in what `prepare` reads gets its own."""
    from harness.data.prepare import prepare
    from harness.task.inputs import TaskInputs
    from harness.task.spec import task_cache_path

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    base = parse_task(task_toml)
    same = ['simulator.prompt_version="v1"', "scoring.seed=7", "scoring.bootstrap=2000",
            'simulator.cascade="top=1,sample=0.1"', 'scoring.rank_by="detection_auroc"']
    for edit in same:
        spec = load_task(str(task_toml), [edit])
        assert spec.hash != base.hash and task_cache_path(spec) == task_cache_path(base), edit
    for edit in ("scoring.n_quantiles=501", 'scoring.quantile_method="linear"', "contexts.test=7",
                 "contexts.T=25", 'latents.rewritten={count = 2, rule = "stratified"}'):
        assert task_cache_path(load_task(str(task_toml), [edit])) != task_cache_path(base), edit
    first = prepare(base)
    other = load_task(str(task_toml), same)
    inputs = TaskInputs(other, "cpu")

    def no_subject():
        raise AssertionError("the subject ran: the prepared cache was not reused")

    inputs.subject = no_subject  # type: ignore[method-assign]
    again = prepare(other, inputs=inputs)
    np.testing.assert_array_equal(again.rewritten, first.rewritten)
    np.testing.assert_array_equal(again.splits["test"], first.splits["test"])
