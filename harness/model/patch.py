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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from harness.errors import HarnessError
from harness.model.hooks import Capture

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


def cache_kwarg(model: nn.Module) -> str:
    # transformers 5.x renamed past_key_values to cache (the old name warns, then goes away)
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _last(output):
    return output[0] if isinstance(output, tuple) else output


def _last_row(h: Tensor) -> Tensor:
    return h[:, -1, :].detach().float().clone()


@contextmanager
def _hooked(module: nn.Module, kind: str, capture: dict | None, replacement: Tensor | None) -> Iterator[None]:
    """Record x/y at the last position of this forward into `capture`, and/or overwrite it with `replacement`."""
    cap = Capture(module, inputs=kind == "transcoder", select=_last_row) if capture is not None else None

    def replace_hook(_mod, _args, output):
        # Registered after the capture's hook, so the capture sees the module's own output.
        assert replacement is not None
        out = _last(output)
        if replacement.shape != (out.shape[0], out.shape[-1]):
            raise ValueError(f"replacement has shape {tuple(replacement.shape)}, "
                             f"expected {(out.shape[0], out.shape[-1])}")
        rep = replacement.to(device=out.device, dtype=out.dtype)[:, None, :]
        new = torch.cat([out[:, :-1, :], rep], dim=1)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = module.register_forward_hook(replace_hook) if replacement is not None else None
    try:
        yield
    finally:
        if cap is not None and capture is not None:
            cap.remove()
            capture["y"] = cap.y
            capture["x"] = cap.x if kind == "transcoder" else cap.y
        if handle is not None:
            handle.remove()


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

    def __init__(self, patcher: Patcher, input_ids: Tensor):
        from transformers import DynamicCache

        self.patcher = patcher
        model: Any = patcher.model
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

    def _run_last(self, ids: Tensor, cache, capture: dict | None, replacement: Tensor | None,
                  at: Patcher | None = None) -> Tensor:
        p, where = self.patcher, at or self.patcher
        kw = {p.cache_kw: cache, "use_cache": True} if cache is not None else {"use_cache": False}
        with torch.inference_mode(), _hooked(where.module, where.kind, capture, replacement):
            try:
                out = p.model(input_ids=ids, **kw)
            finally:
                if cache is self.cache and cache is not None:
                    _crop_to(cache, self.n_prefix)
        return out.logits[:, -1, :]

    def capture(self, targets: Tensor | None = None, at: Patcher | None = None) -> LastPosition:
        """Coder input/target at the last position (of `at`'s module, default this patcher's) and, given
        targets, the clean CE."""
        cap: dict = {}
        logits = self._run_last(self.last_ids, self.cache, cap, None, at)
        return LastPosition(cap["x"], cap["y"], None if targets is None else _ce(logits, targets))

    def ce(self, replacement: Tensor | None, targets: Tensor, at: Patcher | None = None) -> Tensor:
        """CE [B] (float64) with the hookpoint's last-position output replaced (None: clean). `at`: another
        patcher on the same model, whose module is replaced instead (the prefix is shared)."""
        return _ce(self._run_last(self.last_ids, self.cache, None, replacement, at), targets)

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
            # Full-attention layers: every model this engine patches (transformers types layers more widely).
            tiled = DynamicCache([(layer.keys.repeat(g, 1, 1, 1), layer.values.repeat(g, 1, 1, 1))  # pyright: ignore
                                  for layer in self.cache.layers], config=self.patcher.model.config)
            rep = torch.cat([r.reshape(B, -1) for r in chunk], dim=0)
            logits = self._run_last(self.last_ids.repeat(g, 1), tiled, None, rep)
            out.append(_ce(logits, targets.to(logits.device).long().repeat(g)).view(g, B))
        return torch.cat(out, dim=0)


class Patcher:
    def __init__(self, model: nn.Module, hookpoint: str, kind: str):
        _check_kind(kind)
        # A transformers model: `config` and `base_model` are attributes nn.Module's types do not know.
        self.model: Any = model
        self.hookpoint, self.kind = hookpoint, kind
        self.module = resolve_hookpoint(model, hookpoint)
        self.cache_kw = cache_kwarg(model)

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


# ---------------------------------------------------------------- named conditions over many windows

Replace = Callable[[LastPosition], Tensor]


@torch.inference_mode()
def last_position_ce(model: nn.Module, windows: np.ndarray, conditions: Mapping[str, tuple[str, Replace] | None],
                     kind: str = "transcoder", batch_size: int = 16,
                     progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """CE of each window's last token under named conditions, one prefix pass per batch.

    A condition is None (clean) or (hookpoint, replace): `replace(last)` gets that module's last-position
    input/output (`LastPosition`) and returns the output to patch in. For the build scripts (the transcoder's
    report, the layer sweep): the same engine as scoring.
    """
    hookpoints = list(dict.fromkeys(c[0] for c in conditions.values() if c is not None))
    if not hookpoints:
        raise ValueError("last_position_ce needs at least one patched condition")
    patchers = {hp: Patcher(model, hp, kind) for hp in hookpoints}
    first = patchers[hookpoints[0]]
    out: dict[str, list[np.ndarray]] = {name: [] for name in conditions}
    for s in range(0, len(windows), batch_size):
        ids = torch.as_tensor(np.asarray(windows[s:s + batch_size], dtype=np.int64), device=_model_device(model))
        targets = ids[:, -1]
        with first.prefix(ids[:, :-1]) as h:
            lasts = {hp: h.capture(targets, at=pt) for hp, pt in patchers.items()}
            for name, cond in conditions.items():
                if cond is None:
                    ce = lasts[hookpoints[0]].ce_clean  # the capture's own forward is the clean run
                else:
                    hp, replace = cond
                    ce = h.ce(replace(lasts[hp]), targets, at=patchers[hp])
                assert ce is not None
                out[name].append(ce.cpu().numpy())
        if progress is not None:
            progress(min(s + batch_size, len(windows)))
    return {name: np.concatenate(v) if v else np.zeros(0) for name, v in out.items()}
