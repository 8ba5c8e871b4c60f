"""Last-position patching (docs/protocol.md §5).

Every condition differs from the clean run only at the window's last position, and a causal model's
earlier positions cannot see it. So the prefix (positions 0..T-2) is run once into a KV cache and each
condition recomputes only position T-1 against that cache, which is then cut back to the prefix so the
next condition starts from the same state. `ce_with_patch_full` / `last_position_full` are the plain
full-sequence versions the tests hold the fast path to.

Hooks: for a transcoder the hooked module is the MLP; its input is the coder's x and its output the
coder's target y. For an SAE the hooked module is the layer (or whatever module the SAE reads); its
output is both x and y. A replacement overwrites output[:, -1, :] only.
"""

from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from harness.errors import HarnessError

KINDS = ("transcoder", "sae")


@dataclass
class LastPosition:
    """Everything read at the window's last position for a batch of contexts (x, y in float32)."""
    x: Tensor                  # coder input  [B, d]  (MLP input for transcoders, residual for SAEs)
    y: Tensor                  # coder target [B, d]  (MLP output for transcoders, = x for SAEs)
    ce_clean: Tensor | None    # [B] float64; None when no targets were given


def _hookpoint_examples(base: nn.Module, limit: int = 6) -> list[str]:
    names = [n for n, _ in base.named_modules() if re.search(r"(^|\.)\d+(\.mlp)?$", n)]
    if not names:
        names = [n for n, _ in base.named_modules() if n and n.count(".") <= 2]
    if len(names) > limit:
        names = names[: limit - 2] + ["...", names[-1]]
    return names


def resolve_hookpoint(model: nn.Module, hookpoint: str) -> nn.Module:
    """The module at `hookpoint`, a path relative to model.base_model (sparsify's convention)."""
    base = getattr(model, "base_model", model)
    if not isinstance(hookpoint, str) or not hookpoint.strip():
        raise HarnessError(f"hookpoint {hookpoint!r} is empty: name a module such as "
                           f"{', '.join(_hookpoint_examples(base)[:2])}")
    try:
        return base.get_submodule(hookpoint)
    except AttributeError:
        arch = type(model).__name__
        raise HarnessError(
            f"hookpoint {hookpoint!r} is not a module of {arch} (paths are relative to its base model "
            f"{type(base).__name__}): use one of {', '.join(_hookpoint_examples(base))}"
        ) from None


def _cache_kwarg(model: nn.Module) -> str:
    # transformers 5.x renamed past_key_values to cache (the old name warns, then goes away)
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _last(output):
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def _hooked(module: nn.Module, kind: str, capture: dict | None, replacement: Tensor | None) -> Iterator[None]:
    """Record x/y at the last position of this forward into `capture`, and/or overwrite it with `replacement`."""
    handles = []
    if capture is not None and kind == "transcoder":
        def pre_hook(_mod, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            capture["x"] = h[:, -1, :].detach().float().clone()

        handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))

    def post_hook(_mod, _args, output):
        out = _last(output)
        if capture is not None:
            capture["y"] = out[:, -1, :].detach().float().clone()
            if kind == "sae":
                capture["x"] = capture["y"]
        if replacement is None:
            return None
        if replacement.shape != (out.shape[0], out.shape[-1]):
            raise ValueError(f"replacement has shape {tuple(replacement.shape)}, "
                             f"expected {(out.shape[0], out.shape[-1])}")
        rep = replacement.to(device=out.device, dtype=out.dtype)[:, None, :]
        new = torch.cat([out[:, :-1, :], rep], dim=1)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handles.append(module.register_forward_hook(post_hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _ce(logits_last: Tensor, targets: Tensor) -> Tensor:
    """-log p(target) in float64, [B]."""
    logp = logits_last.double().log_softmax(-1)
    return -logp.gather(-1, targets.to(logp.device).long().view(-1, 1)).squeeze(-1)


def _as_ids(input_ids, device: torch.device) -> Tensor:
    ids = torch.as_tensor(input_ids).to(device=device, dtype=torch.long)
    if ids.dim() != 2 or ids.shape[1] < 1:
        raise ValueError(f"input_ids must be [B, T] with T >= 1, got shape {tuple(ids.shape)}")
    return ids


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise HarnessError(f"coder kind {kind!r} is unknown: use 'transcoder' or 'sae'")


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _crop_to(cache, length: int) -> None:
    # Per layer and to an absolute length, so a forward that failed half-way is still undone exactly.
    # Negative crop = "remove this many tokens" in every transformers 5.x.
    for layer in cache.layers:
        n = layer.get_seq_length()
        if n > length:
            layer.crop(length - n)


class PrefixHandle:
    """Positions 0..T-2 of a batch, computed once; each call recomputes only position T-1."""

    def __init__(self, patcher: "Patcher", input_ids: Tensor):
        from transformers import DynamicCache

        self.patcher = patcher
        model = patcher.model
        ids = _as_ids(input_ids, _model_device(model))
        self.batch_size, self.T = ids.shape
        self.last_ids = ids[:, -1:]
        self.n_prefix = self.T - 1
        self.cache = None
        if self.n_prefix > 0:
            self.cache = DynamicCache(config=model.config)
            with torch.inference_mode():
                # The base model only: the prefix's logits are never needed.
                model.base_model(input_ids=ids[:, :-1], use_cache=True, **{patcher.cache_kw: self.cache})

    def _run_last(self, ids: Tensor, cache, capture: dict | None, replacement: Tensor | None) -> Tensor:
        p = self.patcher
        kw = {p.cache_kw: cache, "use_cache": True} if cache is not None else {"use_cache": False}
        with torch.inference_mode(), _hooked(p.module, p.kind, capture, replacement):
            try:
                out = p.model(input_ids=ids, **kw)
            finally:
                if cache is self.cache and cache is not None:
                    _crop_to(cache, self.n_prefix)
        return out.logits[:, -1, :]

    def capture(self, targets: Tensor | None = None) -> LastPosition:
        """Coder input/target at the last position and, given targets, the clean CE."""
        cap: dict = {}
        logits = self._run_last(self.last_ids, self.cache, cap, None)
        return LastPosition(cap["x"], cap["y"], None if targets is None else _ce(logits, targets))

    def ce(self, replacement: Tensor | None, targets: Tensor) -> Tensor:
        """CE [B] (float64) with the hookpoint's last-position output replaced (None: clean)."""
        return _ce(self._run_last(self.last_ids, self.cache, None, replacement), targets)

    def ce_batch(self, replacements: Sequence[Tensor], targets: Tensor, max_rows: int = 256) -> Tensor:
        """CE [R, B] for R replacements, several per forward on a tiled copy of the cache."""
        R, B = len(replacements), self.batch_size
        if R == 0:
            return torch.empty(0, B, dtype=torch.float64)
        if any(r is None for r in replacements):
            raise ValueError("ce_batch takes replacement tensors only; use ce(None, targets) for the clean run")
        group = max(1, max_rows // B)
        if group == 1 or self.cache is None:
            return torch.stack([self.ce(r, targets) for r in replacements])
        from transformers import DynamicCache

        out = []
        for start in range(0, R, group):
            chunk = replacements[start:start + group]
            g = len(chunk)
            # Row r*B + b is replacement r on context b; the tiled cache is a throwaway copy.
            tiled = DynamicCache([(layer.keys.repeat(g, 1, 1, 1), layer.values.repeat(g, 1, 1, 1))
                                  for layer in self.cache.layers], config=self.patcher.model.config)
            rep = torch.cat([r.reshape(B, -1) for r in chunk], dim=0)
            logits = self._run_last(self.last_ids.repeat(g, 1), tiled, None, rep)
            out.append(_ce(logits, targets.to(logits.device).long().repeat(g)).view(g, B))
        return torch.cat(out, dim=0)


class Patcher:
    def __init__(self, model: nn.Module, hookpoint: str, kind: str):
        _check_kind(kind)
        self.model, self.hookpoint, self.kind = model, hookpoint, kind
        self.module = resolve_hookpoint(model, hookpoint)
        self.cache_kw = _cache_kwarg(model)

    @contextmanager
    def prefix(self, input_ids: Tensor) -> Iterator[PrefixHandle]:
        """input_ids [B, T] (the window, without the target): runs positions 0..T-2 once."""
        handle = PrefixHandle(self, input_ids)
        try:
            yield handle
        finally:
            handle.cache = None  # free the KV memory as soon as the block ends


# ---------------------------------------------------------------- reference path (no KV reuse)

def logits_with_patch_full(model: nn.Module, hookpoint: str, kind: str, input_ids: Tensor,
                           replacement: Tensor | None) -> Tensor:
    """Logits [B, T, V] of one full forward with the last position's hookpoint output replaced."""
    _check_kind(kind)
    module = resolve_hookpoint(model, hookpoint)
    ids = _as_ids(input_ids, _model_device(model))
    with torch.inference_mode(), _hooked(module, kind, None, replacement):
        return model(input_ids=ids, use_cache=False).logits


def ce_with_patch_full(model: nn.Module, hookpoint: str, kind: str, input_ids: Tensor, targets: Tensor,
                       replacement: Tensor | None) -> Tensor:
    return _ce(logits_with_patch_full(model, hookpoint, kind, input_ids, replacement)[:, -1, :], targets)


def last_position_full(model: nn.Module, hookpoint: str, kind: str, input_ids: Tensor,
                       targets: Tensor | None = None) -> LastPosition:
    _check_kind(kind)
    module = resolve_hookpoint(model, hookpoint)
    ids = _as_ids(input_ids, _model_device(model))
    cap: dict = {}
    with torch.inference_mode(), _hooked(module, kind, cap, None):
        logits = model(input_ids=ids, use_cache=False).logits[:, -1, :]
    return LastPosition(cap["x"], cap["y"], None if targets is None else _ce(logits, targets))
