"""benchmarks/simulate.py on a tiny random model, and the prefix engine pieces it measures (no downloads)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.simulate import SimContext
from harness.simulate.plain import PlainSimulator
from harness.simulate.prefix import PrefixSimulator, plan_batches
from harness.testing.tiny import build_model, build_tokenizer, synthetic_texts

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "simulate.py"
HAS_COMPILER = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
SMALL = ["--tiny", "-C", "3", "-E", "4", "--warm-contexts", "1", "--threads", "1", "-T", "24"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_simulate", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_run_prints_table_agrees_and_skips_missing_vllm(bench, capsys, tmp_path):
    rc = bench.main(SMALL + ["--vllm-python", str(tmp_path / "no-such-python"), "--no-record"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for text in ("predictions/s", "vs plain", "plain (transformers)", "prefix (shared prefix)",
                 "max |ΔEV| vs plain", "agreement: ok", "3 contexts x 4 explanations = 12 predictions"):
        assert text in out, text
    assert bench.VLLM_SKIP in out
    assert "vLLM (prefix caching)" not in out
    assert torch.get_num_threads() == 1


def test_tiny_run_records_and_replaces_its_section(bench, capsys, tmp_path):
    js, md = tmp_path / "throughput.json", tmp_path / "RESULTS.md"
    js.write_text(json.dumps({"measurements": [{"backend": "plain", "model": "other", "device": "gpu",
                                                "predictions_per_s": 1.0}]}))
    args = SMALL + ["--no-vllm", "--plain-pairs", "5", "--json-out", str(js), "--results-md", str(md)]
    for _ in range(2):
        assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "plain forward timed on 5 of the 12 pairs" in out
    rows = json.loads(js.read_text())["measurements"]
    assert {(r["backend"], r["model"]) for r in rows} == {
        ("plain", "other"), ("plain", "tiny random Llama (harness.testing.tiny)"), ("prefix", "tiny random Llama (harness.testing.tiny)")}
    for r in rows:
        assert r["predictions_per_s"] > 0 and {"backend", "model", "device", "predictions_per_s"} <= set(r)
    text = md.read_text()
    assert text.count("## tiny random Llama (harness.testing.tiny), cpu (") == 1     # replaced, not appended twice
    assert "| prefix | float32 |" in text and "torch " in text


def test_per_context_workload_is_its_own_row(bench, capsys, tmp_path):
    """--per-context N scores each context against N of the explanations (a cascade's workload): recorded as a
    row of its own beside the dense one, and the one-context-at-a-time engine agrees with the batched one."""
    js, md = tmp_path / "throughput.json", tmp_path / "RESULTS.md"
    rec = ["--no-vllm", "--json-out", str(js), "--results-md", str(md)]
    assert bench.main(SMALL + rec) == 0
    assert bench.main(SMALL + rec + ["--per-context", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 contexts x 2 of 4 explanations each (a cascade's workload) = 6 predictions" in out
    assert "agreement: ok" in out
    rows = [r for r in json.loads(js.read_text())["measurements"] if r["backend"] == "prefix"]
    assert sorted(r["per_context"] for r in rows) == [2, 4]
    assert md.read_text().count("<!-- simulate: tiny random Llama") == 2
    assert bench.main(SMALL + ["--no-vllm", "--no-record", "--per-context", "2", "--prefix-batch-tokens", "1"]) == 0
    assert "agreement: ok" in capsys.readouterr().out


def test_script_runs_as_a_command_from_elsewhere(tmp_path):
    """A fresh clone: run by path from another folder, no vLLM in the interpreter given."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(SCRIPT), *SMALL, "-E", "2", "--vllm-python", str(tmp_path / "none"),
                        "--no-record"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "agreement: ok" in r.stdout and "vLLM not installed: skipped" in r.stdout


def test_engines_argument_requires_plain(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--engines", "prefix,vllm"])


# ------------------------------------------------------------------ the prefix engine pieces


def test_plan_batches_partitions_and_limits_padding():
    rng = np.random.default_rng(0)
    lengths = rng.permutation([34, 36, 36, 37, 37, 38, 38, 38, 38, 38, 39, 39, 39, 39, 40, 40, 41, 41, 42, 42,
                               42, 42, 42, 43, 43, 43, 44, 44, 45, 45, 48, 51])
    for max_batch in (1, 5, 32):
        batches = plan_batches(lengths, max_batch)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
        assert all(1 <= len(b) <= max_batch for b in batches)
    padded = sum(len(b) * lengths[b].max() for b in plan_batches(lengths, 32))
    assert padded <= 1.05 * lengths.sum()        # one batch of 32 would pad 25%
    assert plan_batches([], 8) == []
    assert [b.tolist() for b in plan_batches([5, 5, 5], 8)] == [[0, 1, 2]]


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer(synthetic_texts(400, 0))
    ctxs = []
    for i, text in enumerate(synthetic_texts(3, 7)):
        ids = tok(text)["input_ids"][: 8 + 5 * i]
        ctxs.append(SimContext(f"c{i}", tok.decode(ids[:-1]), tok.decode(ids[-1:])))
    expl = ["numbers", "", "code: function definitions, loops and imports", "x", "the end of a sentence"]
    pairs = [(c, e) for c in range(len(ctxs)) for e in range(len(expl))][::-1]
    return tok, ctxs, expl, pairs


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_shared_prefix_attention_matches_library_path_and_plain(tiny, arch):
    tok, ctxs, expl, pairs = tiny
    model = build_model(arch, len(tok), 3)
    ref, ref_mass = PlainSimulator(model, tok, "v1", 400, "t", batch_size=4).predict(ctxs, expl, pairs)
    fast = PrefixSimulator(model, tok, "v1", 400, "t", batch_size=3)
    lib = PrefixSimulator(model, tok, "v1", 400, "t", batch_size=3, shared_prefix_attention=False)
    a, a_mass = fast.predict(ctxs, expl, pairs)
    b, _ = lib.predict(ctxs, expl, pairs)
    assert fast.shared_attention and not lib.shared_attention
    np.testing.assert_allclose(a, ref, atol=2e-5)
    np.testing.assert_allclose(b, ref, atol=2e-5)
    np.testing.assert_allclose(a_mass, ref_mass, rtol=1e-4)
    assert model.config._attn_implementation == "sdpa"   # only switched during a suffix pass


@pytest.mark.parametrize("budget", [1, 62, 10_000])   # prefixes of 40, 27, 35 tokens: 62 pairs two
def test_contexts_batched_together_match_plain(tiny, budget):
    """A cascade's scattered pairs (a few explanations per context, some contexts with one): prefixes of
    different lengths batched together (right-padded), suffix batches that mix contexts, or one context at a
    time (budget 1), all give the plain engine's answers."""
    tok, ctxs, expl, _ = tiny
    model = build_model("llama", len(tok), 5)
    pairs = [(2, 4), (0, 1), (2, 0), (1, 3), (0, 2), (2, 2), (1, 1)]
    ref, ref_mass = PlainSimulator(model, tok, "v1", 400, "t").predict(ctxs, expl, pairs)
    sim = PrefixSimulator(model, tok, "v1", 400, "t", batch_size=4, prefix_batch_tokens=budget)
    got, mass = sim.predict(ctxs, expl, pairs)
    assert sim.shared_attention
    np.testing.assert_allclose(got, ref, atol=2e-5)
    np.testing.assert_allclose(mass, ref_mass, rtol=1e-4)


def test_shared_prefix_attention_falls_back_when_unsupported(tiny, monkeypatch):
    from transformers import AttentionInterface

    from harness.simulate import prefix as P

    tok, ctxs, expl, pairs = tiny
    model = build_model("llama", len(tok), 4)
    ref, _ = PlainSimulator(model, tok, "v1", 400, "t").predict(ctxs, expl, pairs)
    sim = PrefixSimulator(model, tok, "v1", 400, "t", batch_size=4)

    def unsupported(*args, **kwargs):   # as for a model whose attention needs a sliding window or a softcap
        raise P._Unsupported("test")

    monkeypatch.setitem(AttentionInterface._global_mapping, P.SHARED_PREFIX_ATTENTION, unsupported)
    got, _ = sim.predict(ctxs, expl, pairs)
    assert not sim.shared_attention
    np.testing.assert_allclose(got, ref, atol=2e-5)
    assert model.config._attn_implementation == "sdpa"


def test_random_arch_config_is_llama3_8b(bench):
    """The published Llama-3-8B shape: 8,030,261,248 parameters (counted from the config, nothing built)."""
    c = bench.RANDOM_ARCHS["llama3-8b"]
    d, f, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = d // c["num_attention_heads"] * c["num_key_value_heads"]
    per_layer = d * (d + 2 * kv + d) + 3 * d * f + 2 * d
    assert 2 * V * d + L * per_layer + d == 8_030_261_248


def test_random_arch_run_on_a_small_shape(bench, capsys, tmp_path, monkeypatch):
    """--random-arch builds the named shape with random weights in the requested dtype and times it with the
    tokenizer of --model-dir; the engines still agree (float32)."""
    tok = build_tokenizer(synthetic_texts(400, 0))
    tok.save_pretrained(tmp_path / "tok")
    from simbench import workload   # benchmarks/simulate.py's workload module (pytest's pythonpath)

    monkeypatch.setitem(workload.RANDOM_ARCHS, "tiny-test", dict(
        vocab_size=len(tok) + 17, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512))
    # SmolLM2 ids: not this tokenizer's
    monkeypatch.setattr(workload, "DEFAULT_CORPUS", ROOT / "tasks" / "no-such-corpus.npz")
    m = workload.random_model("tiny-test", "bfloat16", "cpu", 0)
    assert m.dtype == torch.bfloat16 and m.config.vocab_size == len(tok) + 17
    args = ["--random-arch", "tiny-test", "--model-dir", str(tmp_path / "tok"), "-C", "3", "-E", "4",
            "--warm-contexts", "1", "--threads", "1", "-T", "24", "--no-vllm", "--no-record"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "random-init tiny-test float32" in out and "agreement: ok" in out


def test_engine_limits_compares_the_engine_with_both_weight_layouts():
    """The distance-to-limit line, derived by hand, and the F.linear layout measured beside `a @ b`."""
    import engine_limits as el   # benchmarks/engine_limits.py (pytest's pythonpath)

    peaks = el.matmul_peak("float32", 1, [(32, 32, 32), (16, 24, 40)], seconds=0.01)
    assert all(p["linear_gflops"] > 0 and p["gflops"] > 0 for p in peaks)
    peaks = [{"m": 8, "k": 8, "n": 8, "gflops": 216.0},
             {"m": 4, "k": 6, "n": 10, "gflops": 180.0, "linear_gflops": 90.0}]
    flops = {"per_prediction": 54e9, "decoder_linear_params": 1.31e9, "flops_per_token_linear": 2.62e9,
             "per_suffix_token": 2.65e9, "suffix_tokens_per_prediction": 16.0, "useful_total": 100.0,
             "parts": {"suffix_linear": 70.0, "suffix_attention": 9.0, "context": 16.0, "head": 4.0,
                       "readout": 1.0, "padding": 6.0}}
    lines = el.report_lines(2.0, None, flops, peaks, None, "float32", 2)
    # 2 predictions/s x 54 GFLOP = 108 GFLOP/s: 50% of 216 and 60% of 180; at 216 GFLOP/s, 4.0/s = 2.0x
    assert "**108 GFLOP/s**" in lines[1] and "4x6x10 180 (F.linear, weight [n, k] as the engine stores it: 90)" in lines[1]
    assert "50% of the square-matmul peak" in lines[2] and "60% of a matmul of its own" in lines[2]
    assert "would run at 4.0 predictions/s, 2.0x the measured rate" in lines[2]
    assert "differ more than 2x" not in lines[1]   # 180 vs 90 is exactly 2x
    # bfloat16 on AVX2: `a @ b` crawls while F.linear runs; the limit is the faster layout, and the line says so
    peaks[0] = {"m": 8, "k": 8, "n": 8, "gflops": 5.0, "linear_gflops": 216.0}
    lines = el.report_lines(2.0, None, flops, peaks, None, "bfloat16", 2)
    assert "differ more than 2x" in lines[1] and "50% of the square-matmul peak (216 GFLOP/s)" in lines[2]


def test_linear_kernels_prints_one_checked_row_per_shape_and_row_count(capsys):
    """Every (shape, rows) cell is measured; oneDNN's packed kernel's and inductor's rates are printed only after
    their output matched the float32 product (else "wrong result")."""
    import linear_kernels as lk   # benchmarks/linear_kernels.py (pytest's pythonpath)

    assert lk.main(["--dtype", "float32", "--rows", "4", "32", "--shapes", "16x24", "24x8",
                    "--seconds", "0.01", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "## float32: 2048-cube matmul" in out and "(F.linear)" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 16 x 24") or line.startswith("| 24 x 8")]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [("16 x 24", "4"), ("16 x 24", "32"),
                                                            ("24 x 8", "4"), ("24 x 8", "32")]
    for r in rows:   # oneDNN's packed kernel and inductor's compute F.linear's product (checked before timing)
        assert float(r[2]) >= 0 and r[4].strip() != "wrong result" and r[5].strip() != "wrong result"
        if HAS_COMPILER:   # a compile that failed prints "-"
            assert float(r[5].split()[0]) >= 0   # a number, not "-"


def test_linear_kernels_agreement_is_the_output_dtypes_rounding_of_the_float32_product():
    """Tolerance max(1e-3, 4 eps) of the reference's largest entry (2 here): float32 0.002, bf16 4 x 2^-7 x 2."""
    import torch

    import linear_kernels as lk

    reference = torch.tensor([1.0, -2.0])
    assert lk.agrees(reference + torch.tensor([0.0, 0.0019]), reference)
    assert not lk.agrees(reference + torch.tensor([0.0021, 0.0]), reference)
    bf16 = torch.tensor([1.0625, -2.0], dtype=torch.bfloat16)   # 0.0625 off: exactly the bound
    assert lk.agrees(bf16, reference)
    assert not lk.agrees(torch.tensor([1.078125, -2.0], dtype=torch.bfloat16), reference)


needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="inductor's CPU kernels need a C++ compiler")


@needs_compiler
def test_compiled_linears_run_inside_the_block_and_leave_the_model_as_it_was():
    """Every linear layer but the output head runs a compiled twin inside `with` (one dynamo graph each, called once
    per layer by the forward, with no recompile for its new row count; the same logits within float32 summation
    noise), and none does after it (the eager logits again, bit for bit, and a forward set before is kept)."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    from simbench.inductor import CompiledLinears   # benchmarks/simbench (pytest's pythonpath)

    model = build_model("llama", 50, 7).eval()
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()]
    assert len(layers) == 2 * 7   # two decoder layers: q, k, v, o, gate, up, down
    hooked = layers[0].forward   # a bound method set on the instance, as a hook would
    layers[0].forward = hooked
    with torch.inference_mode():
        eager = model(ids).logits
        graphs = counters["stats"]["unique_graphs"]
        with CompiledLinears(model, "default") as compiled:
            assert compiled.compiled == len(layers) and compiled.seconds > 0 and inductor_config.freezing
            assert counters["stats"]["unique_graphs"] - graphs == len(layers)   # none fell back to eager
            calls = []
            for m in layers:
                m.forward = lambda x, f=m.forward: calls.append(1) or f(x)
            inside = model(ids).logits
            assert len(calls) == len(layers)
            assert counters["stats"]["unique_graphs"] - graphs == len(layers)   # 27 rows, none recompiled
        after = model(ids).logits
    assert not inductor_config.freezing
    assert layers[0].__dict__["forward"] == hooked
    assert not any("forward" in m.__dict__ for m in layers[1:])
    assert torch.allclose(inside, eager, atol=1e-5, rtol=1e-5)
    assert torch.equal(after, eager)


@needs_compiler
def test_inductor_row_is_measured_checked_and_kept_out_of_the_throughput_file(bench, capsys, tmp_path):
    """`--inductor` adds a timed 'prefix-inductor' row, checked against the plain forward like the others,
    written to RESULTS but not to throughput.json: `harness estimate` prices only engines the harness runs."""
    js, md = tmp_path / "throughput.json", tmp_path / "RESULTS.md"
    assert bench.main(SMALL + ["--no-vllm", "--inductor", "default", "--json-out", str(js), "--results-md", str(md)]) == 0
    out = capsys.readouterr().out
    assert "prefix, inductor linears" in out and "prefix-inductor ok" in out
    assert {r["backend"] for r in json.loads(js.read_text())["measurements"]} == {"plain", "prefix"}
    row = next(line for line in md.read_text().splitlines() if line.startswith("| prefix-inductor | float32 |"))
    assert "14 linear layers compiled (default" in row   # the tiny Llama's two decoder layers x 7


def test_a_layer_inductor_cannot_compile_is_none_with_the_reason_on_stderr(monkeypatch, capsys):
    """No C++ compiler (or any other inductor failure) leaves the layer uncompiled and says why, in one line."""
    from simbench import inductor

    def broken(*_a, **_k):
        def run(_x):
            raise RuntimeError("Compiler: cc is not found.\nmore detail")
        return run
    monkeypatch.setattr(torch, "compile", broken)
    assert inductor.compile_linear(torch.nn.Linear(4, 3), "default") is None
    assert capsys.readouterr().err == ("inductor could not compile a 4 x 3 float32 linear layer (default): "
                                       "RuntimeError: Compiler: cc is not found.\n")
    model = build_model("llama", 50, 7)
    with inductor.CompiledLinears(model, "default") as layers:
        assert layers.compiled == 0 and not any("forward" in m.__dict__ for m in model.modules())
