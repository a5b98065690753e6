"""The model hub from a machine that may have no network: whether it can be reached, and loading offline.

Without a network, huggingface_hub retries every request for minutes before it gives up (144 s and 132 warning lines
for one model id). savi asks once, with a short timeout, and then either loads from the local cache with downloads
switched off, or stops at once with what to do.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

PROBE_SECONDS = 3.0


def hub_host() -> tuple[str, int] | None:
    """The host and port of the Hugging Face hub (or of HF_ENDPOINT)."""
    parsed = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    if not parsed.hostname:
        return None
    return parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)


def offline_declared() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def reachable(host: tuple[str, int]) -> bool:
    """Whether a TCP connection to the host opens within PROBE_SECONDS (name lookup included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(host, timeout=PROBE_SECONDS).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(PROBE_SECONDS + 0.5)
    return bool(result and result[0])


@contextlib.contextmanager
def offline(enabled: bool) -> Iterator[None]:
    """Forbid Hugging Face downloads for the duration (the env var, and the constant read at import time)."""
    if not enabled:
        yield
        return
    import huggingface_hub.constants as hf_constants

    saved_env, saved_const = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = saved_const
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
