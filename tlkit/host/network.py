"""Can model weights be downloaded now? Asked once per host and process, so that an offline machine fails at once.

Without a network, the hub libraries retry each request with growing pauses ("Retrying in 8s") for about a minute
before they fail. tlkit asks first: :func:`offline_reason` says why a download from a URL cannot happen (the
Hugging Face offline variables, or a short TCP connect to the host that fails), and :func:`use_hub_cache_only` makes
``huggingface_hub`` (and transformers and timm, which download through it) read its local cache without a network
call. Files already in the cache then still load; anything else fails in one line naming the local alternatives.

When a proxy is configured (``HTTPS_PROXY``, ``ALL_PROXY``), a direct connect says nothing about the network, so
the probe is skipped and the download itself decides.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

#: The variables with which Hugging Face's libraries are told to stay offline.
HF_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: Seconds a connect to the hub may take before the hub counts as unreachable (``TLKIT_NETWORK_TIMEOUT``).
DEFAULT_TIMEOUT = 3.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
#: Why this process reads the hub's cache only (set by :func:`use_hub_cache_only`).
_cache_only_because: str | None = None


def hf_endpoint() -> str:
    """The Hugging Face hub's address (``HF_ENDPOINT``, else ``https://huggingface.co``)."""
    return os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"


def _true(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hf_offline_set() -> str | None:
    """The offline variable that is set (``HF_HUB_OFFLINE=1``), or ``None``."""
    for var in HF_OFFLINE_VARS:
        if _true(os.environ.get(var)):
            return f"{var}={os.environ[var]}"
    return None


def _timeout() -> float:
    try:
        return max(0.1, float(os.environ.get("TLKIT_NETWORK_TIMEOUT", DEFAULT_TIMEOUT)))
    except ValueError:
        return DEFAULT_TIMEOUT


@functools.cache
def _unreachable(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to ``host:port`` fails (``None`` when it opens). Asked once per process."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror:
        return f"{host} cannot be resolved (no network?)"
    except TimeoutError:
        return f"{host} did not answer within {timeout:g} s"
    except OSError as exc:
        return f"{host} is unreachable ({exc.strerror or type(exc).__name__})"


def offline_reason(url: str | None = None) -> str | None:
    """Why nothing can be downloaded from ``url`` (default: the Hugging Face hub) now, in a few words; ``None`` when
    it may be. A Hugging Face offline variable counts for the hub only; the network is probed once per host."""
    url = url or hf_endpoint()
    parsed = urlparse(url if "://" in url else f"https://{url}")
    host = parsed.hostname or ""
    if not host:
        return None
    hub = urlparse(hf_endpoint()).hostname
    if host == hub and _cache_only_because is not None:
        return _cache_only_because
    offline = hf_offline_set()
    if offline and host == hub:
        return f"{offline} is set"
    if any(os.environ.get(var) for var in _PROXY_VARS):
        return None
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    return _unreachable(host, port, _timeout())


def use_hub_cache_only(reason: str) -> None:
    """From now on in this process, ``huggingface_hub`` reads its local cache and makes no network call (as with
    ``HF_HUB_OFFLINE=1``): what is cached loads, the rest fails at once instead of retrying for a minute.
    ``reason`` (from :func:`offline_reason`) is what later questions about the hub are answered with."""
    global _cache_only_because
    if _cache_only_because is None:
        _cache_only_because = reason
    os.environ["HF_HUB_OFFLINE"] = "1"  # for transformers' own checks and for worker processes
    try:
        import huggingface_hub.constants as constants
    except ImportError:
        return
    constants.HF_HUB_OFFLINE = True


def reset() -> None:
    """Forget the probes' answers (tests; a process whose network came back). The hub stays cache-only in this
    process once :func:`use_hub_cache_only` was called."""
    _unreachable.cache_clear()


__all__ = ["HF_OFFLINE_VARS", "hf_endpoint", "hf_offline_set", "offline_reason", "reset", "use_hub_cache_only"]
