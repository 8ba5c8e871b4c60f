"""Simulator served elsewhere: OpenAI-compatible `/v1/completions` (vLLM, SGLang, llama.cpp server...).

Prompts are sent as token ids built here by the same PromptBuilder the local engines use, so the
server never applies its own chat template. Requests are ordered by context so that a server with
prefix caching sees shared prefixes back to back, spread round-robin over the endpoints, and retried
with exponential backoff on server errors, timeouts and dropped connections.

Answers are read from `top_logprobs`. Each request also names the answer tokens by id
(`logprob_token_ids`, which vLLM's server honours: it then returns exactly those tokens' log-probabilities,
so an answer far down the distribution keeps its value, which the yes/no prompt's log-odds need). A server
that refuses the field (HTTP 400 naming it) is asked again without it, and from then on only the top 20
come back: an answer outside them counts as probability 0. Servers that ignore unknown fields also answer
with the top 20. `by_token_ids=False` never sends the field.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np

from harness.errors import HarnessError
from harness.simulate.base import Engine, Progress, SimContext, answers_from_logprobs

_RETRY_STATUS = {408, 409, 425, 429}


def completions_url(endpoint: str) -> str:
    url = endpoint.rstrip("/")
    if url.endswith("/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/completions"
    return url + "/v1/completions"


class _Retryable(Exception):
    pass


def _run_coroutine(coro):
    """asyncio.run, also from inside a running loop (notebooks), by using a private thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class HTTPSimulator(Engine):
    name = "http"

    def __init__(self, endpoints: Sequence[str] | str, model: str, tokenizer, prompt_version: str,
                 max_chars: int, model_key: str, *, max_concurrency: int = 32, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 0.5, prompts_per_request: int = 1,
                 extra_body: dict | None = None, transport=None, api_key: str | None = None,
                 by_token_ids: bool = True):
        try:
            import httpx  # noqa: F401
        except ImportError:
            raise HarnessError("the http simulator needs httpx: pip install 'harness[http]'") from None
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise HarnessError("the http simulator needs at least one endpoint URL (e.g. http://127.0.0.1:8000)")
        self.endpoints = [e.strip() for e in endpoints]
        self.urls = [completions_url(e) for e in self.endpoints]
        self.served_model = model
        self._prompts_for(tokenizer, prompt_version, max_chars, model_key)
        self.max_concurrency = max(1, int(max_concurrency))
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.prompts_per_request = max(1, int(prompts_per_request))
        self.extra_body = dict(extra_body or {})
        self.transport = transport            # tests pass an httpx.MockTransport
        self.api_key = api_key
        answers = self.builder.template.answers
        self._answer_of_key = {a: d for d, a in enumerate(answers)}
        # vLLM's --return-tokens-as-token-ids writes "token_id:<id>" instead of the token's text.
        self._answer_of_key.update({f"token_id:{tid}": d for d, tid in enumerate(self.answer_ids)})
        self.n_retries = 0
        self.by_token_ids = bool(by_token_ids)   # cleared when a server refuses logprob_token_ids

    def _body(self, prompts: list[list[int]]) -> dict:
        body = {"model": self.served_model, "prompt": prompts[0] if len(prompts) == 1 else prompts,
                "max_tokens": 1, "temperature": 0, "logprobs": 20}
        if self.by_token_ids:
            body["logprob_token_ids"] = list(self.answer_ids)
        body.update(self.extra_body)
        return body

    def _parse(self, data: dict, n: int, url: str) -> np.ndarray:
        try:
            choices = sorted(data["choices"], key=lambda ch: ch.get("index", 0))
            if len(choices) != n:
                raise ValueError(f"{len(choices)} choices for {n} prompts")
            out = np.full((n, len(self.answer_ids)), -np.inf)
            for row, ch in enumerate(choices):
                top = ch["logprobs"]["top_logprobs"][0]
                for tok, lp in top.items():
                    d = self._answer_of_key.get(tok)
                    if d is not None and lp is not None:
                        out[row, d] = max(out[row, d], float(lp))
            return out
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise HarnessError(
                f"simulator endpoint {url} answered without per-token logprobs ({e}): it must support "
                "/v1/completions with logprobs"
            ) from e

    async def _request(self, client, sem, first: int, prompts: list[list[int]]) -> np.ndarray:
        import httpx

        last_err = ""
        tried: list[str] = []
        for attempt in range(self.retries + 1):
            url = self.urls[(first + attempt) % len(self.urls)]
            tried.append(url)
            if attempt:
                self.n_retries += 1
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                async with sem:
                    by_ids = self.by_token_ids
                    r = await client.post(url, json=self._body(prompts))
                    if by_ids and r.status_code == 400 and "logprob_token_ids" in r.text:
                        # This server does not take answer ids: top-20 log-probabilities from now on.
                        self.by_token_ids = False
                        r = await client.post(url, json=self._body(prompts))
                if r.status_code >= 500 or r.status_code in _RETRY_STATUS:
                    raise _Retryable(f"HTTP {r.status_code}")
                if r.status_code >= 400:
                    raise HarnessError(f"simulator endpoint {url} refused the request: HTTP {r.status_code} "
                                       f"{r.text[:200]!r}")
                try:
                    data = r.json()
                except ValueError:
                    raise HarnessError(f"simulator endpoint {url} answered with something that is not JSON: "
                                       f"{r.text[:200]!r}") from None
                return self._parse(data, len(prompts), url)
            except (_Retryable, httpx.TimeoutException, httpx.TransportError) as e:
                last_err = f"{type(e).__name__}: {e}" if not isinstance(e, _Retryable) else str(e)
        where = ", ".join(dict.fromkeys(tried))
        raise HarnessError(f"simulator endpoint {where} failed {self.retries + 1} times (last: {last_err}); "
                           "check that the server is up and serves model " + repr(self.served_model))

    async def _run_all(self, requests: list[list[list[int]]], progress: Progress | None) -> list[np.ndarray]:
        import httpx

        sem = asyncio.Semaphore(self.max_concurrency)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        kwargs = {"timeout": self.timeout, "limits": limits, "headers": headers}
        if self.transport is not None:
            kwargs["transport"] = self.transport
        results: list = [None] * len(requests)
        next_index = iter(range(len(requests)))
        async with httpx.AsyncClient(**kwargs) as client:
            # A fixed pool of workers rather than one task per request: a million pairs stay cheap.
            async def worker():
                for i in next_index:
                    results[i] = await self._request(client, sem, i, requests[i])
                    if progress is not None:
                        progress(len(requests[i]))

            tasks = [asyncio.ensure_future(worker()) for _ in range(min(self.max_concurrency, len(requests)))]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        return results

    def _predict(self, contexts: Sequence[SimContext], explanations: Sequence[str], pairs: np.ndarray,
                 progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
        order = np.lexsort((pairs[:, 1], pairs[:, 0]))
        prompts = [self.full_prompt(contexts[pairs[i, 0]], explanations[int(pairs[i, 1])]) for i in order]
        k = self.prompts_per_request
        requests = [prompts[s:s + k] for s in range(0, len(prompts), k)]
        results = _run_coroutine(self._run_all(requests, progress))
        logprobs = np.empty((len(pairs), len(self.answer_ids)))
        logprobs[order] = np.concatenate(results, axis=0)
        return answers_from_logprobs(logprobs)
