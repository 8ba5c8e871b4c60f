"""How far the shared-prefix engine is from this machine's limit: FLOPs per prediction, the matmul peak, a profile.

Used by `benchmarks/simulate.py --profile`, in the same process and with the same threads as the timed
engines:

- `matmul_peak`: the best rate of a torch matmul in the engine's dtype, on a large square product and on the
  shapes of the engine's own suffix batches (rows x width tokens against the MLP's up projection), both as
  `a @ b` with b stored [k, n] and as the engine calls its layers, `F.linear` with the weight stored [n, k]
  (the two layouts reach different kernels: on an AVX2 CPU in bf16, 1 vs 19 GFLOP/s; benchmarks/RESULTS.md);
- `prefix_flops`: the work the shared-prefix engine must do for a workload, counted from the model's
  configuration: 2 x (weights of the decoder's linear layers) per token, the attention products (2 x 2 x heads x
  head dim x attended positions per token and layer), the LM head at the answer position (all rows: the
  answer mass needs the full softmax), once for the instruction head, once per context for its tokens, and per
  prediction for its suffix; padding of the suffix batches is counted apart;
- `profile_prefix`: one more (untimed) run of the engine with wall-clock timers on its phases (instruction
  head, context prefix, suffix forward, read-out) and one under `torch.profiler`, whose self CPU time is
  grouped into weight GEMMs (aten::mm / addmm), attention products (aten::bmm), elementwise and copies.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np


def _best_seconds(fn, seconds: float) -> float:
    """The best time per call of `fn` over about `seconds`, in repetitions of ~0.25 s, after a warm-up."""
    fn()
    t0 = time.perf_counter()
    fn()
    reps = max(1, int(0.25 / max(time.perf_counter() - t0, 1e-6)))
    best = float("inf")
    t_end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
        if time.perf_counter() > t_end:
            return best


def matmul_peak(dtype: str, threads: int, shapes: list[tuple[int, int, int]], seconds: float = 2.0) -> list[dict]:
    """Best FLOP/s for each (m, k, n) of `a @ b` (b stored [k, n]) and of `F.linear(a, w)` (w stored [n, k], as the
    engine's layers hold their weights), each timed for about `seconds`. Both layouts, because in bfloat16 on AVX2
    they differ ~20x (benchmarks/linear_kernels.py): a peak taken from one layout alone misjudges the engine."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    out = []
    g = torch.Generator().manual_seed(0)
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=g).to(dt)
        b = torch.randn(k, n, generator=g).to(dt)
        c = a @ b
        flop = 2.0 * m * k * n
        row = {"m": m, "k": k, "n": n, "dtype": dtype,
               "gflops": flop / _best_seconds(lambda a=a, b=b, c=c: torch.matmul(a, b, out=c), seconds) / 1e9}
        w = b.t().contiguous()
        with torch.inference_mode():
            row["linear_gflops"] = flop / _best_seconds(lambda a=a, w=w: F.linear(a, w), seconds) / 1e9
        out.append(row)
    return out


def _cfg(model):
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    d = cfg.hidden_size
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    return cfg, d, heads, head_dim


def decoder_linear_params(model) -> int:
    """Weights of the decoder's linear layers (what each token multiplies), without embeddings and LM head."""
    import torch

    head = model.get_output_embeddings()
    n = 0
    for mod in model.base_model.modules():
        if isinstance(mod, torch.nn.Linear) and mod is not head:
            n += mod.weight.numel()
    return n


def prefix_flops(model, builder, contexts, explanations, pairs, batch_size: int) -> dict:
    """FLOPs the shared-prefix engine does on this workload, by part (see the module docstring)."""
    from harness.simulate.prefix import plan_batches

    cfg, d, heads, head_dim = _cfg(model)
    layers = cfg.num_hidden_layers
    vocab = model.get_output_embeddings().weight.shape[0]
    p_lin = decoder_linear_params(model)
    per_tok = 2.0 * p_lin

    def attn(q_tokens: int, first_pos: int) -> float:   # causal: token at position t attends to t + 1 positions
        pos = np.arange(first_pos, first_pos + q_tokens) + 1
        return float(4.0 * layers * heads * head_dim * pos.sum())

    head_n = len(builder.head_ids)
    f = defaultdict(float)
    f["head"] = head_n * per_tok + attn(head_n, 0)
    by_ctx = defaultdict(list)
    for c, e in pairs:
        by_ctx[c].append(e)
    suffix_tokens = padded_tokens = 0
    for c, es in by_ctx.items():
        pre = builder.prefix(contexts[c].text, contexts[c].last_token)
        f["context"] += (len(pre) - head_n) * per_tok + attn(len(pre) - head_n, head_n)
        lens = [len(builder.suffix(explanations[e])) for e in es]
        for L in lens:
            f["suffix_linear"] += L * per_tok
            f["suffix_attention"] += attn(L, len(pre))
            suffix_tokens += L
        for sel in plan_batches(lens, batch_size):
            w = max(lens[i] for i in sel)
            padded_tokens += len(sel) * w - sum(lens[i] for i in sel)
        f["readout"] += len(es) * 2.0 * d * vocab
    f["padding"] = padded_tokens * per_tok
    useful = sum(v for k, v in f.items() if k != "padding")
    n = len(pairs)
    return {"decoder_linear_params": p_lin, "flops_per_token_linear": per_tok, "parts": dict(f),
            "useful_total": useful, "per_prediction": useful / n, "suffix_tokens": suffix_tokens,
            "suffix_tokens_per_prediction": suffix_tokens / n, "padded_tokens": padded_tokens,
            "per_suffix_token": (f["suffix_linear"] + f["suffix_attention"]) / max(1, suffix_tokens)}


def profile_prefix(sim, contexts, explanations, pairs) -> dict:
    """Phase wall-clock times of one run, then self CPU time by op group of another under torch.profiler."""
    import torch

    phases = defaultdict(float)
    originals = {}
    depth = [0]   # a wrapped phase called inside another is the outer one's time, not counted twice

    def wrap(name, label_fn):
        fn = getattr(sim, name)
        originals[name] = fn

        def timed(*a, **k):
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    phases[label_fn(a, k)] += time.perf_counter() - t0
        setattr(sim, name, timed)

    # _run serves the instruction head (no cache given) and the contexts' tokens (the head's cache given); the
    # suffixes run through _suffix_logits one context at a time, or _attend_prefixes with contexts batched.
    wrap("_run", lambda a, k: "instruction head" if a[1] is None else "context prefix")
    wrap("_suffix_logits", lambda a, k: "suffix forward")
    wrap("_attend_prefixes", lambda a, k: "suffix forward")
    wrap("read_out", lambda a, k: "read-out (LM head)")
    sim._head_kv = None
    try:
        t0 = time.perf_counter()
        sim.predict(contexts, explanations, pairs)
        total = time.perf_counter() - t0
    finally:
        for name in originals:
            delattr(sim, name)   # back to the class's methods
    sim._head_kv = None
    timed = dict(phases)
    timed["other (python, cache copies, batching)"] = max(0.0, total - sum(phases.values()))

    groups = {"weight GEMMs (aten::mm/addmm)": ("aten::mm", "aten::addmm", "aten::_weight_int8pack_mm"),
              "attention products (aten::bmm)": ("aten::bmm", "aten::baddbmm"),
              "softmax/exp (attention)": ("aten::exp", "aten::_softmax", "aten::softmax", "aten::amax",
                                          "aten::maximum", "aten::masked_fill_", "aten::sum", "aten::div"),
              "copies/layout": ("aten::copy_", "aten::clone", "aten::cat", "aten::contiguous", "aten::_to_copy",
                                "aten::index", "aten::fill_", "aten::zero_", "aten::empty", "aten::resize_")}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        sim.predict(contexts, explanations, pairs)
        prof_total = time.perf_counter() - t0
    sim._head_kv = None
    by_group = defaultdict(float)
    top = []
    for ev in prof.key_averages():
        self_s = ev.self_cpu_time_total / 1e6
        if self_s <= 0:
            continue
        top.append((ev.key, self_s))
        for g, names in groups.items():
            if ev.key in names:
                by_group[g] += self_s
                break
        else:
            by_group["other ops (norms, rope, silu, mul, add, ...)"] += self_s
    top.sort(key=lambda x: -x[1])
    return {"total_s": total, "phases_s": timed, "profiled_total_s": prof_total, "ops_s": dict(by_group),
            "top_ops": top[:8]}


def report_lines(rate_prefix: float, rate_plain: float | None, flops: dict, peaks: list[dict], prof: dict | None,
                 dtype: str, threads: int) -> list[str]:
    """Markdown bullet lines for RESULTS.md (also printed)."""
    per_pred = flops["per_prediction"]
    achieved = per_pred * rate_prefix / 1e9
    def rate(p: dict) -> float:  # the better weight layout: the limit is what this CPU can do, not one kernel
        return max(p["gflops"], p.get("linear_gflops", 0.0))

    square = max((p for p in peaks if p["m"] == p["k"] == p["n"]), key=rate, default=None)
    engine_shaped = [p for p in peaks if not p["m"] == p["k"] == p["n"]]
    parts = flops["parts"]
    useful = flops["useful_total"]
    lines = [
        f"- **limit ({dtype}, {threads} threads)**: {flops['decoder_linear_params'] / 1e9:.2f}B weights in the decoder's "
        f"linear layers = {flops['flops_per_token_linear'] / 1e9:.2f} GFLOP per token; with attention, "
        f"{flops['per_suffix_token'] / 1e9:.2f} GFLOP per suffix token; "
        f"{flops['suffix_tokens_per_prediction']:.1f} suffix tokens per prediction; all work counted "
        f"(instruction head, each context's prefix, suffixes, LM head at the answer) "
        f"{per_pred / 1e9:.1f} GFLOP per prediction, of which suffixes "
        f"{100 * (parts['suffix_linear'] + parts['suffix_attention']) / useful:.0f}%, context prefixes "
        f"{100 * parts['context'] / useful:.0f}%, instruction head {100 * parts['head'] / useful:.0f}%, "
        f"LM head {100 * parts['readout'] / useful:.0f}%; batch padding adds "
        f"{100 * parts['padding'] / useful:.0f}% on top",
    ]
    peak_txt = ", ".join(f"{p['m']}x{p['k']}x{p['n']} {p['gflops']:.0f}"
                         + (f" (F.linear, weight [n, k] as the engine stores it: {p['linear_gflops']:.0f})"
                            if "linear_gflops" in p else "") for p in peaks)
    skew = [p for p in peaks if "linear_gflops" in p
            and max(p["gflops"], p["linear_gflops"]) > 2 * min(p["gflops"], p["linear_gflops"])]
    if skew:
        peak_txt += ("; the two weight layouts differ more than 2x here, so each figure below uses the faster "
                     "(benchmarks/linear_kernels.py tabulates both)")
    lines.append(f"- **measured**: prefix engine {rate_prefix:.2f} predictions/s x {per_pred / 1e9:.1f} GFLOP = "
                 f"**{achieved:.0f} GFLOP/s**; torch matmul in {dtype} on {threads} threads (m x k x n: GFLOP/s): "
                 f"{peak_txt}")
    if square:
        best = max(rate(p) for p in peaks)
        lines.append(f"- **distance to the limit**: the engine runs at {100 * achieved / rate(square):.0f}% of the "
                     f"square-matmul peak ({rate(square):.0f} GFLOP/s)"
                     + (f" and {100 * achieved / rate(engine_shaped[0]):.0f}% of a matmul of its own suffix-batch "
                        f"shape ({rate(engine_shaped[0]):.0f} GFLOP/s)" if engine_shaped else "")
                     + f"; at the best matmul rate measured ({best:.0f} GFLOP/s) this workload would run at "
                     f"{best * 1e9 / per_pred:.1f} predictions/s, {best * 1e9 / per_pred / rate_prefix:.1f}x the measured rate"
                     + (f" (plain forward: {rate_plain:.2f}/s)" if rate_plain else ""))
    if prof:
        tot = prof["total_s"]
        ph = ", ".join(f"{k} {100 * v / tot:.0f}%" for k, v in sorted(prof["phases_s"].items(), key=lambda x: -x[1]))
        ops_tot = sum(prof["ops_s"].values())
        ops = ", ".join(f"{k} {100 * v / ops_tot:.0f}%" for k, v in sorted(prof["ops_s"].items(), key=lambda x: -x[1]))
        lines.append(f"- **where the time goes** (one more run, {tot:.1f} s, wall-clock timers): {ph}")
        lines.append(f"- **by op** (torch.profiler, self CPU time, {ops_tot:.1f} s): {ops}; top ops: "
                     + ", ".join(f"{k} {v:.2f} s" for k, v in prof["top_ops"][:5]))
    return lines
