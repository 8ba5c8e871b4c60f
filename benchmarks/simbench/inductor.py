"""Linear layers run by inductor's own kernels: `torch.compile` with the weights frozen into the graph.

Freezing is what lets inductor repack a weight and choose its kernel (in float32 MKL's packed sgemm for a fixed
number of rows, oneDNN's packed linear for dynamic rows; in bfloat16 oneDNN's or, with mode "max-autotune", its
C++ GEMM micro-kernels, which use AMX tiles on an AMX CPU). With the weight passed as an input instead, inductor
kept the stock matmul and gained nothing (measured on Ice Lake: benchmarks/RESULTS.md, "Inductor's kernels"),
so each layer is compiled on its own: ~0.6 s a layer once the first of its shape is done. Used by
`linear_kernels.py` (one layer) and `simulate.py --inductor` (every decoder layer of a model).
"""

from __future__ import annotations

import sys
import time

MODES = ("default", "max-autotune")


def compile_linear(layer, mode: str, rows: int | None = None):
    """A compiled twin of the `nn.Linear` `layer` (same weight and bias tensors), for `rows`-row 2-D inputs, or
    any number of rows when `rows` is None; compiled here, on a first call, so that no timing pays for it.
    None where inductor cannot compile on this machine (no C++ compiler, an unsupported dtype)."""
    import torch
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    if mode not in MODES:
        raise ValueError(f"inductor mode must be one of {', '.join(MODES)}, not {mode!r}")
    # parameters made under inference mode would be inference tensors, which dynamo cannot trace
    with torch.inference_mode(False):
        twin = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                               dtype=layer.weight.dtype, device=layer.weight.device).eval()
    twin.weight.data = layer.weight.data
    if layer.bias is not None:
        twin.bias.data = layer.bias.data
    # Every twin runs nn.Linear.forward, one code object: past dynamo's recompile limit (8 entries) the rest of
    # a model's layers would silently run eager. Raised for the process: a compiled layer may recompile later.
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 4096)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 16384)
    compiled = torch.compile(twin, mode=None if mode == "default" else mode, dynamic=rows is None, fullgraph=True)
    try:
        # freezing applies only without autograd, as the engines run
        with inductor_config.patch(freezing=True), torch.inference_mode():
            compiled(torch.zeros(rows or 37, layer.in_features, dtype=layer.weight.dtype, device=layer.weight.device))
    except Exception as e:   # noqa: BLE001 - inductor's failures (no compiler, unsupported op) have no common type
        first = (str(e).strip().splitlines() or [""])[0][:200]
        sys.stderr.write(f"inductor could not compile a {layer.in_features} x {layer.out_features} "
                         f"{str(layer.weight.dtype).removeprefix('torch.')} linear layer ({mode}): "
                         f"{type(e).__name__}: {first}\n")
        return None
    return compiled


class CompiledLinears:
    """Inside `with`, every `nn.Linear` of `model` but its output embeddings runs a compiled twin (any rows; the
    leading dimensions flattened into one), and inductor freezes weights of anything that recompiles; outside,
    the layers and inductor's settings are as they were. Compiles on first entry: `seconds` is what that took,
    `compiled` how many layers it compiled (0: inductor cannot run here, said on stderr)."""

    def __init__(self, model, mode: str):
        self.model, self.mode = model, mode
        self.forwards: dict = {}
        self.saved: dict = {}
        self.seconds = 0.0
        self._freezing = None

    @property
    def compiled(self) -> int:
        return len(self.forwards)

    def _compile(self) -> None:
        import torch

        head = self.model.get_output_embeddings()
        start = time.perf_counter()
        for layer in self.model.modules():
            if isinstance(layer, torch.nn.Linear) and layer is not head:
                twin = compile_linear(layer, self.mode)
                if twin is None:
                    self.forwards.clear()
                    break

                def forward(x, twin=twin, k=layer.in_features):
                    return twin(x.reshape(-1, k)).reshape(*x.shape[:-1], -1)
                self.forwards[layer] = forward
        self.seconds = time.perf_counter() - start

    def __enter__(self):
        import torch._inductor.config as inductor_config

        if self._freezing is not None:
            raise RuntimeError("CompiledLinears is not re-entrant")
        if not self.forwards and not self.seconds:
            self._compile()
        self._freezing = inductor_config.patch(freezing=True)
        self._freezing.__enter__()
        for layer, forward in self.forwards.items():
            # an instance attribute shadows nn.Linear.forward for this layer only; one set before (a hook's) is kept
            self.saved[layer] = layer.__dict__.get("forward")
            layer.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        for layer, before in self.saved.items():
            if before is None:
                del layer.forward
            else:
                layer.forward = before
        self.saved.clear()
        if self._freezing is not None:
            self._freezing.__exit__(*exc)
            self._freezing = None
