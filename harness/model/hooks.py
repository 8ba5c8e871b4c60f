"""The one way the package reads a module's input or output during a forward pass.

Used for the coder's inputs (data preparation), the last position of a patched window (scoring) and the
MLP activations a transcoder is trained on (build). A transcoder reads the MLP's input and is trained to
produce its output; an SAE reads and reproduces one module's output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the captured module has run: later layers are not needed."""


def _detach(h: Tensor) -> Tensor:
    return h.detach()


class Capture:
    """Forward hooks on one module recording its input (`x`) and/or output (`y`) on each call.

    `select` maps the hidden states before they are kept (a slice, a dtype); `keep_all` also appends every
    call's values to `xs`/`ys`; `stop` raises StopForward after the last hook it needs. Use as a context
    manager, or call `remove()`.
    """

    def __init__(self, module: nn.Module, *, inputs: bool = True, outputs: bool = True,
                 select: Callable[[Tensor], Tensor] = _detach, stop: bool = False, keep_all: bool = False):
        self.select, self.stop, self.keep_all = select, stop, keep_all
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.xs: list[Tensor] = []
        self.ys: list[Tensor] = []
        self._stop_after_input = stop and not outputs
        self._handles = []
        if inputs:
            self._handles.append(module.register_forward_pre_hook(self._pre, with_kwargs=True))
        if outputs:
            self._handles.append(module.register_forward_hook(self._post))

    def _pre(self, _mod: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        # Decoder layers and some MLPs receive the hidden states as a keyword argument.
        self.x = self.select(args[0] if args else kwargs["hidden_states"])
        if self.keep_all:
            self.xs.append(self.x)
        if self._stop_after_input:
            raise StopForward

    def _post(self, _mod: nn.Module, _args: tuple, output: Any) -> None:
        self.y = self.select(output[0] if isinstance(output, tuple) else output)
        if self.keep_all:
            self.ys.append(self.y)
        if self.stop:
            raise StopForward

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
