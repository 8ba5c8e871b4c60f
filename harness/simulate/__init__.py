"""Simulators (§3): a prompt per (explanation, context), digit probabilities read at the next token.

Backends: "plain" (reference, one full prompt per pair), "prefix" (transformers with a shared KV prefix
per context: the default), "vllm" (in-process vLLM with prefix caching), "http" (OpenAI-compatible
completions servers). Wrap any of them in `CachedSimulator` to store and resume predictions.
"""

from __future__ import annotations

from harness.errors import HarnessError
from harness.names import Backend, allowed
from harness.simulate.base import SimContext, Simulator, expected_value, explanation_sha
from harness.simulate.prompt import (
    PROMPT_VERSIONS,
    PromptBuilder,
    PromptParts,
    answer_token_ids,
    build_prompt,
    digit_token_ids,
    prompt_score,
)
from harness.simulate.store import CachedSimulator, PredictionStore

BACKENDS = allowed(Backend)


def make_simulator(backend: str, model, tokenizer, prompt_version: str, max_chars: int, model_key: str, **kw):
    """`model` is a loaded transformers model for plain/prefix, a model folder for vllm, and the served
    model name for http (which also needs `endpoints=[...]`). Extra keywords go to the backend."""
    name = (backend or "auto").lower()
    if name == "auto":
        name = "prefix"
    if name == "plain":
        from harness.simulate.plain import PlainSimulator
        return PlainSimulator(model, tokenizer, prompt_version, max_chars, model_key, **kw)
    if name == "prefix":
        from harness.simulate.prefix import PrefixSimulator
        return PrefixSimulator(model, tokenizer, prompt_version, max_chars, model_key, **kw)
    if name in ("vllm", "http"):
        # Batching is the server's or vLLM's own business there; the task's torch batch size does not apply.
        kw.pop("batch_size", None)
    if name == "vllm":
        from harness.simulate.vllm_backend import VLLMSimulator
        return VLLMSimulator(model, tokenizer, prompt_version, max_chars, model_key, **kw)
    if name == "http":
        from harness.simulate.http_backend import HTTPSimulator
        endpoints = kw.pop("endpoints", None)
        if not endpoints:
            raise HarnessError("the http simulator backend needs endpoints (--endpoints http://127.0.0.1:8000[,URL...])")
        return HTTPSimulator(endpoints, model, tokenizer, prompt_version, max_chars, model_key, **kw)
    raise HarnessError(f"unknown simulator backend {backend!r}: choose one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS", "CachedSimulator", "PROMPT_VERSIONS", "PredictionStore", "PromptBuilder", "PromptParts",
    "SimContext", "Simulator", "answer_token_ids", "build_prompt", "digit_token_ids", "expected_value",
    "explanation_sha", "make_simulator", "prompt_score",
]
