"""The Hugging Face Hub, in one place: is it offline or unreachable, what is in the local cache, and the
cache-first load that fails in one line instead of retrying the network for half a minute.

Every Hub input (coder files, models, corpus file) is first looked for in the local Hugging Face cache
(`HF_HUB_CACHE`, else `$HF_HOME/hub`, read when called, not at import). Which inputs a task needs, and
their pins, is `harness.task.inputs`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from harness.errors import HarnessError

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")
_reachable: dict[str, str | None] = {}


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as it is now (huggingface_hub reads it at import)."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hub endpoint cannot be reached (no TCP connection within `timeout`), or None.

    Behind a proxy a direct probe says nothing about the proxied route: assumed reachable. The answer is
    kept per endpoint for the process, so a run probes at most once.
    """
    endpoint = hub_endpoint()
    if endpoint not in _reachable:
        if any(os.environ.get(v) for v in _PROXY_VARS):
            _reachable[endpoint] = None
        else:
            u = urlparse(endpoint)
            host, port = u.hostname or "", u.port or (443 if u.scheme == "https" else 80)
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                _reachable[endpoint] = None
            except OSError as e:
                _reachable[endpoint] = f"cannot reach {host}:{port}: {e}"
    return _reachable[endpoint]


def hub_reachable(timeout: float = 3.0) -> bool:
    return unreachable_reason(timeout) is None


def offline_hint(what: str) -> str:
    return (
        f"connect to the Hugging Face Hub, or pre-download {what} into HF_HOME "
        "(`hf download ...` on a connected machine, then copy HF_HOME over), "
        "or point the task at a local copy with --override (see the task README)"
    )


def short_revision(rev: str) -> str:
    return rev[:12] if len(rev) == 40 else (rev or "main")


def cached_file(repo: str, filename: str, revision: str, repo_type: str = "model") -> Path | None:
    """The file's path in the local Hugging Face cache at that revision, or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        p = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache_dir()), revision=revision or None,
                                   repo_type=repo_type)
    except Exception:  # malformed repo id or revision: treat as not cached, the download names the problem
        return None
    return Path(p) if isinstance(p, str) and Path(p).is_file() else None


def model_cached(repo: str, revision: str) -> bool:
    return cached_file(repo, "config.json", revision) is not None and any(
        cached_file(repo, f, revision) is not None for f in _WEIGHT_FILES)


def hub_errors() -> tuple[type[BaseException], ...]:
    """Every exception a Hub download can raise for a missing file or a network problem."""
    errs: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import (
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
        )
        errs += [HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled]
    except ImportError:  # older huggingface_hub: these all derive from OSError/ValueError there
        pass
    for mod, name in (("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errs.append(getattr(__import__(mod), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errs)


def short_reason(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    first = first if len(first) <= 160 else first[:157] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def cache_first(loader: Callable[..., Any], repo: str, revision: str, fail: Callable[[str], HarnessError],
                **kwargs: Any) -> Any:
    """`loader(repo, ...)` from the local cache, else from the Hub unless it is offline or unreachable.

    Cache first, so an offline machine fails in milliseconds instead of retrying the network;
    `fail(reason)` builds the one-line error.
    """
    errors = hub_errors()
    kwargs["revision"] = revision or None
    try:
        return loader(repo, local_files_only=True, **kwargs)
    except errors as e:
        cached_error = e
    if hub_offline():
        raise fail(f"not in the local cache and HF_HUB_OFFLINE is set; {short_reason(cached_error)}") from None
    reason = unreachable_reason()
    if reason is not None:
        raise fail(f"not in the local cache and {reason}") from None
    # huggingface_hub reads HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT at import (default 10 s each)
    try:
        return loader(repo, **kwargs)
    except errors as e:
        raise fail(short_reason(e)) from None
