"""Can this machine reach the Hub? Offline mode (HF_HUB_OFFLINE) says no at once; else one TCP
connection to the Hub's endpoint, with a short timeout, remembered for a minute. Light module."""

from __future__ import annotations

import os
import socket
import time
from urllib.parse import urlsplit

TIMEOUT_S = 1.5
REMEMBER_S = 60.0
_last: tuple[float, bool] | None = None


def offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable() -> bool:
    """False when offline mode is on or the Hub's endpoint does not accept a connection."""
    global _last
    if offline_mode():
        return False
    now = time.monotonic()
    if _last is not None and now - _last[0] < REMEMBER_S:
        return _last[1]
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=TIMEOUT_S):
            ok = True
    except OSError:
        ok = False
    _last = (now, ok)
    return ok
