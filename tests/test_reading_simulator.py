"""The offline simulator that reads: multi-part GGUF models, the yes/no prompt and its read-out, the lexical
latent rule, and the simulator check's verdicts (tiny fakes; no download, no real model)."""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.model import gguf as gguf_cache
from harness.errors import HarnessError
from harness.model.load import ModelRef
from harness.simulate import SimContext, build_prompt, expected_value, prompt_score
from harness.simulate.plain import PlainSimulator
from harness.simulate.prefix import PrefixSimulator
from harness.simulate.prompt import answer_token_ids
from harness.testing.tiny import build_model, build_tokenizer, synthetic_texts

# ---------------------------------------------------------------- multi-part GGUF

@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three packages `fakeparts_pN` whose data/partNN.bin concatenate to one file; imports would fail."""
    root = tmp_path / "site"
    blob = b"GGUF" + bytes(range(256)) * 40
    cuts = [0, 3000, 7000, len(blob)]
    for n in (1, 2, 3):
        pkg = root / f"fakeparts_p{n}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('must never be imported')\n")
        (pkg / "data" / f"part{n:02d}.bin").write_bytes(blob[cuts[n - 1]:cuts[n]])
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    parts = gguf_cache.GGUFParts("fakeparts_p{n}", "data/part{n:02d}.bin", 3, hashlib.sha256(blob).hexdigest(), "0.1")
    yield parts, blob, root
    for n in (1, 2, 3):
        sys.modules.pop(f"fakeparts_p{n}", None)


def _fake_convert(calls):
    def convert(src, out):
        calls.append(src.read_bytes())
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x")
    return convert


def test_parts_assemble_in_order_and_convert_once(fake_parts, tmp_path, monkeypatch):
    parts, blob, _ = fake_parts
    calls = []
    monkeypatch.setattr(gguf_cache, "convert_gguf", _fake_convert(calls))
    folder = gguf_cache.converted_parts_folder(parts, tmp_path / "cache")
    assert folder.name == f"fakeparts_p-{parts.sha256[:12]}"
    assert calls == [blob]                                   # the converter read the parts concatenated 1, 2, 3
    assert not list(folder.parent.glob("*.gguf"))            # the assembled file is only a step
    assert gguf_cache.converted_parts_folder(parts, tmp_path / "cache") == folder and len(calls) == 1


def test_converted_folder_needs_no_parts_later(fake_parts, tmp_path, monkeypatch):
    parts, _, root = fake_parts
    monkeypatch.setattr(gguf_cache, "convert_gguf", _fake_convert([]))
    folder = gguf_cache.converted_parts_folder(parts, tmp_path / "cache")
    (root / "fakeparts_p2" / "data" / "part02.bin").unlink()
    assert gguf_cache.converted_parts_folder(parts, tmp_path / "cache") == folder


def test_missing_part_is_one_line_with_the_install_command(fake_parts, tmp_path):
    parts, _, root = fake_parts
    (root / "fakeparts_p2" / "data" / "part02.bin").unlink()
    with pytest.raises(HarnessError) as e:
        gguf_cache.converted_parts_folder(parts, tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg and "fakeparts_p2" in msg and "fakeparts-p1==0.1 ... fakeparts-p3==0.1" in msg


def test_wrong_sha256_is_refused_and_leaves_nothing(fake_parts, tmp_path, monkeypatch):
    parts, _, _ = fake_parts
    monkeypatch.setattr(gguf_cache, "convert_gguf", _fake_convert([]))
    bad = gguf_cache.GGUFParts(parts.package, parts.file, parts.count, "0" * 64, "0.1")
    with pytest.raises(HarnessError, match="assemble to sha256 .* not the task's 0000000000000000"):
        gguf_cache.converted_parts_folder(bad, tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_interrupted_conversion_reuses_the_assembled_file(fake_parts, tmp_path, monkeypatch):
    parts, blob, root = fake_parts

    def broken(src, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_cache, "convert_gguf", broken)
    with pytest.raises(KeyboardInterrupt):
        gguf_cache.converted_parts_folder(parts, tmp_path / "cache")
    assembled = tmp_path / "cache" / "models" / f"fakeparts_p-{parts.sha256[:12]}.gguf"
    assert assembled.read_bytes() == blob
    calls = []
    monkeypatch.setattr(gguf_cache, "convert_gguf", _fake_convert(calls))
    monkeypatch.setattr(gguf_cache, "assemble_parts", lambda *a: pytest.fail("reassembled a verified file"))
    gguf_cache.converted_parts_folder(parts, tmp_path / "cache")
    assert calls == [blob]


def test_gguf_parts_model_ref_validation():
    good = {"source": "gguf-parts", "package": "p{n}", "file": "data/part{n:02d}.bin", "parts": 22,
            "sha256": "AB" * 32, "dtype": "bfloat16"}
    ref = ModelRef.from_dict(good, "t [simulator]")
    assert ref.parts == 22 and ref.sha256 == "ab" * 32
    assert ref.key() == f"gguf-parts:{'ab' * 8}:bfloat16"
    assert ref.gguf_parts().part(3) == ("p3", "data/part03.bin")
    for bad, msg in [({"parts": 0}, "positive integer"), ({"parts": "22"}, "positive integer"),
                     ({"sha256": "xyz"}, "64 hex digits"), ({"file": "data/part.bin"}, "pattern holding")]:
        with pytest.raises(HarnessError, match=msg):
            ModelRef.from_dict({**good, **bad}, "t [simulator]")


# ---------------------------------------------------------------- the yes/no prompt

@pytest.fixture(scope="module")
def yn_tok():
    # The tiny BPE splits "Yes"/"No"; as added tokens they are single ids, as in a real chat model's vocabulary.
    tok = copy.deepcopy(build_tokenizer(synthetic_texts(400, 0)))
    tok.add_tokens(["Yes", "No"])
    return tok


def test_yn1_question_precedes_the_explanation(yn_tok):
    """The suffix a prediction pays for is the explanation and the turn's end, nothing more."""
    p = build_prompt(yn_tok, "yn1", "The cat", " sat", "animals on a farm", 400)
    assert yn_tok.decode(p.suffix_ids) == 'animals on a farm"<|im_end|>\n<|im_start|>assistant\n'
    assert "Answer Yes or No.\n\nExplanation: \"" in yn_tok.decode(p.prefix_ids)
    # yn2 cuts before the space that opens the quote, where the tokenizer itself always cuts: one token more.
    q = build_prompt(yn_tok, "yn2", "The cat", " sat", "animals on a farm", 400)
    assert yn_tok.decode(q.suffix_ids) == ' "animals on a farm"<|im_end|>\n<|im_start|>assistant\n'
    assert yn_tok.decode(q.prefix_ids).endswith("Answer Yes or No.\n\nExplanation:")


def test_prompt_score_by_hand():
    p = np.array([[0.5, 0.5], [0.9, 0.1], [1e-30, 1.0], [1.0, 0.0]], np.float32)
    s = prompt_score("yn1", p)
    assert s[0] == 0 and s[1] == pytest.approx(np.log(0.1 / 0.9), rel=1e-6)
    assert s[2] == pytest.approx(np.log(1 / 1e-30), rel=1e-5)
    assert np.isfinite(s[3]) and s[3] < -80           # saturates at float32's smallest normal, never -inf
    digits = np.random.default_rng(0).dirichlet(np.ones(10), size=5).astype(np.float32)
    np.testing.assert_allclose(prompt_score("v1", digits), expected_value(digits), rtol=1e-6)
    with pytest.raises(ValueError, match="reads 2 answer probabilities"):
        prompt_score("yn1", digits)


@pytest.mark.parametrize("version", ["yn1", "yn2"])
def test_yn_engines_agree_with_a_full_forward(yn_tok, version):
    """Plain and prefix engines give log P(Yes) - log P(No) of a full forward, computed here independently."""
    model = build_model("llama", len(yn_tok), 3)
    ctxs = [SimContext(f"c{i}", t[:40], t[40:46]) for i, t in enumerate(synthetic_texts(3, 5))]
    expl = ["numbers", "the word cat and other animals", "", "code"]
    pairs = [(c, e) for c in range(3) for e in range(4)]
    plain = PlainSimulator(model, yn_tok, version, 400, "k", batch_size=5)
    prefix = PrefixSimulator(model, yn_tok, version, 400, "k", batch_size=3)
    pp, _ = plain.predict(ctxs, expl, pairs)
    qp, _ = prefix.predict(ctxs, expl, pairs)
    yes, no = answer_token_ids(yn_tok, ("Yes", "No"))
    ref = []
    with torch.inference_mode():
        for c, e in pairs:
            ids = build_prompt(yn_tok, version, ctxs[c].text, ctxs[c].last_token, expl[e], 400).ids
            logits = model(torch.tensor([ids])).logits[0, -1].double()
            ref.append(float(logits[yes] - logits[no]))
    np.testing.assert_allclose(prompt_score(version, pp), ref, atol=2e-4)
    np.testing.assert_allclose(prompt_score(version, qp), ref, atol=2e-4)


def test_answers_must_be_single_tokens():
    tok = build_tokenizer(synthetic_texts(400, 0))
    with pytest.raises(HarnessError, match="encodes the answer 'No' as 2 tokens"):
        answer_token_ids(tok, ("No", "Yes"))


# ---------------------------------------------------------------- the lexical latent rule

def test_token_concentration_against_a_loop():
    from harness.data.select import token_concentration

    rng = np.random.default_rng(0)
    n, span, k, L, V = 40, 6, 3, 12, 9
    vals = np.where(rng.random((n, span, k)) < 0.6, rng.random((n, span, k)) + 0.1, 0).astype(np.float32)
    inds = np.stack([rng.choice(L, k, replace=False) for _ in range(n * span)]).reshape(n, span, k)
    tokens = rng.integers(0, V, (n, span))
    share, first = token_concentration(vals, inds, tokens, L + 2, top=2)
    for j in range(L + 2):
        counts: dict[int, int] = {}
        for b in range(n):
            for p in range(span):
                for c in range(k):
                    if vals[b, p, c] > 0 and inds[b, p, c] == j:
                        counts[int(tokens[b, p])] = counts.get(int(tokens[b, p]), 0) + 1
        if not counts:
            assert share[j] == 0 and first[j] == -1
            continue
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        assert share[j] == pytest.approx(sum(c for _, c in ranked[:2]) / sum(counts.values()))
        assert counts[int(first[j])] == ranked[0][1]


def test_lexical_rule_picks_concentrated_latents_with_distinct_top_tokens(tmp_path):
    from harness.data.table import build_activation_table
    from harness.data.select import choose_rewritten
    from harness.task.spec import load_task
    from harness.testing.tiny import TinyTaskOptions, make_tiny_task

    toml = make_tiny_task(tmp_path / "task", TinyTaskOptions())
    values = np.ones((10, 5), np.float32)
    indices = np.tile(np.arange(5), (10, 1))           # latents 0..4 fire everywhere; 5..7 never
    table = build_activation_table(values, indices, 8, 11)
    stats = {"top_token_share": np.array([0.9, 0.95, 0.5, 0.99, 0.8, 1.0, 1.0, 1.0]),
             "top_token": np.array([7, 7, 3, 4, 5, -1, -1, -1])}
    spec = load_task(str(toml), overrides=['latents.rewritten={count = 3, rule = "lexical"}'])
    # by share: 3 (0.99, token 4), 1 (0.95, token 7), 0 (0.9, token 7: taken), 4 (0.8, token 5)
    np.testing.assert_array_equal(choose_rewritten(spec, table, 8, stats), [1, 3, 4])
    spec = load_task(str(toml), overrides=['latents.rewritten={count = 5, rule = "lexical"}'])
    with pytest.raises(HarnessError, match="only 4 lexical latents"):
        choose_rewritten(spec, table, 8, stats)


def test_override_with_nothing_removes_a_key(tmp_path):
    from harness.task.spec import load_task
    from harness.testing.tiny import TinyTaskOptions, make_tiny_task

    toml = make_tiny_task(tmp_path / "task", TinyTaskOptions())
    # A task file without a simulator dtype (the tiny task writes float64): the override adds one, `=` removes it.
    toml.write_text("".join(ln for ln in toml.read_text().splitlines(keepends=True) if not ln.startswith("dtype = ")))
    assert "dtype" not in load_task(str(toml)).simulator.model
    with_dtype = load_task(str(toml), ['simulator.dtype="bfloat16"'])
    assert with_dtype.simulator.model["dtype"] == "bfloat16"
    removed = load_task(str(toml), ['simulator.dtype="bfloat16"', "simulator.dtype="])
    assert "dtype" not in removed.simulator.model and removed.hash == load_task(str(toml)).hash


# ---------------------------------------------------------------- the simulator check's verdicts

class _FakeSim:
    """log-odds +2.2 where `hit(context, explanation)` holds, -0.4 elsewhere."""

    prompt_version = "yn1"
    name = model_key = "fake"

    def __init__(self, hit):
        self.hit = hit

    def predict(self, contexts, explanations, pairs, progress=None):
        p = [[0.1, 0.9] if self.hit(contexts[c], explanations[e]) else [0.6, 0.4] for c, e in pairs]
        return np.asarray(p, np.float32), np.ones(len(p), np.float32)


def _literal(ctx, expl):
    word = ctx.last_token.strip().lower()
    return bool(word) and word in expl.lower()


def test_handwritten_check_verdicts():
    from harness.simulator_check import handwritten
    from harness.simulate.check_cases import CASES

    # Semantic cases reuse one another's explanations as the non-fitting one: an oracle must pair text and match.
    oracle = _FakeSim(lambda c, e: any((k.text, k.last, k.match) == (c.text, c.last_token, e) for k in CASES))
    r = handwritten(oracle, oracle)
    assert r.passed and r.summary.startswith("AUROC 1.000, fitting explanation higher on 100%")
    # A literal matcher finds all 8 lexical cases and 4 semantic ones (harbor, twenty, run, red) and ties on 4:
    # AUROC = 12/16 + 4/16 * 1/2 = 0.875; strictly higher on 12/16 = 75% < 80%: fails.
    lit = _FakeSim(_literal)
    r = handwritten(lit, lit)
    assert not r.passed and r.summary.startswith("AUROC 0.875, fitting explanation higher on 75%")
    ignorer = _FakeSim(lambda c, e: False)
    r = handwritten(ignorer, ignorer)
    assert not r.passed and r.summary.startswith("AUROC 0.500, fitting explanation higher on 0%")


def test_real_vs_shuffled_check_on_a_fake_task():
    from harness.simulator_check import real_vs_shuffled

    words = ["cat", "dog", "sun", "car", "tree", "milk"]
    vocab = {w: i for i, w in enumerate(words)}
    # detection pool: block b ends in word b % 6; context = (block, end position 0)
    det = np.array([[vocab[words[b % 6]]] for b in range(60)])
    tok = SimpleNamespace(decode=lambda ids: " ".join(words[i] for i in ids))
    pos = np.array([[b for b in range(60) if b % 6 == j][:5] for j in range(6)])
    neg = np.array([[b for b in range(60) if b % 6 != j][:5] for j in range(6)])
    prep = SimpleNamespace(rewritten=np.arange(6), splits={"detection": det}, det_pos=pos, det_neg=neg,
                           det_contexts=np.array([[b, 0] for b in range(60)]))
    expl = {j: f'the token "{w}"' for j, w in enumerate(words)}
    lit, ignorer = _FakeSim(_literal), _FakeSim(lambda c, e: False)
    r = real_vs_shuffled(prep, tok, lit, lit, expl, n_boot=2000)
    # Shuffled: latent j gets word w' != its own; its 5 negatives cycle through the other five words, so exactly one
    # ends in w' and outscores the 5 tied positives: AUROC = (4 ties x 1/2) / 5 = 0.4 for every latent.
    assert r.passed and "real 1.000, shuffled 0.400, difference +0.600 [+0.600, +0.600]" in r.summary
    r = real_vs_shuffled(prep, tok, ignorer, ignorer, expl, n_boot=2000)
    assert not r.passed and "difference +0.000" in r.summary


def test_check_cases_are_well_formed():
    from harness.simulate.check_cases import CASES

    assert len(CASES) >= 12 and {c.kind for c in CASES} == {"lexical", "semantic"}
    assert all(c.match != c.other and c.last and c.text for c in CASES)
    json.dumps([c.__dict__ for c in CASES])
