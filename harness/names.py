"""The protocol's closed sets of names, each defined once as a `Literal` type.

Task specs, results and the command line take their allowed values from here: the task loader and the
result loader check a value against its field's type (`allowed`), the JSON Schema lists them as an enum, and
pyright sees a misspelt comparison. Adding a value here is what makes it legal everywhere.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Literal

CoderSource = Literal["local", "hub"]
CoderKind = Literal["transcoder", "sae"]
CorpusSource = Literal["local-tokens", "local-text", "hub"]
LatentRule = Literal["random-alive", "most-frequent", "stratified", "lexical"]
DetectionRule = Literal["fire-rate", "fixed"]
# What a leaderboard ranks by: the mean paired CE difference (the paper's quantity), or the mean per-latent
# detection AUROC for tasks too small for CE to order methods.
RankMetric = Literal["sim_minus_zero", "detection_auroc"]
Backend = Literal["auto", "plain", "prefix", "vllm", "http"]


@functools.cache   # once per class: results are loaded by the hundred for leaderboards and the site
def field_types(cls: type) -> dict[str, typing.Any]:
    """A dataclass's field types, resolved (its annotations are strings under `from __future__ import
    annotations`); the task loader and the result loader check values against them."""
    return typing.get_type_hints(cls)


def allowed(tp: typing.Any) -> tuple[str, ...]:
    """The values of a Literal type (or a union of them), in their written order; () for any other type."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if is_literal(tp):
        return tuple(v for a in typing.get_args(tp) for v in typing.get_args(a))
    return ()


def is_literal(tp: typing.Any) -> bool:
    """A Literal type, or a union made only of Literal types."""
    if typing.get_origin(tp) is Literal:
        return True
    args = typing.get_args(tp)
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and all(
        typing.get_origin(a) is Literal for a in args)


def choice_text(values: tuple[str, ...]) -> str:
    """`a or b` for two values, `one of a, b, c` for more: the phrase an error line uses."""
    return " or ".join(values) if len(values) <= 2 else "one of " + ", ".join(values)
