"""Who may connect, and how much a connection may ask for.

- Bound to loopback (the default), no key is needed, but the Host header must name loopback too, so a web
  page cannot reach the server through DNS rebinding.
- Bound anywhere else, an API key is required (refusing to start without one), given as
  `Authorization: Bearer <key>` or, from browsers that cannot set headers, as the WebSocket subprotocol
  `openai-insecure-api-key.<key>`.
- Browsers send an Origin: it must be the page's own origin or on the allow-list, so that another site open
  in the same browser cannot use the server (or, on loopback, the user's session) behind their back.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

API_KEY_ENV = "MICROTURN_API_KEY"
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
REALTIME_SUBPROTOCOL = "realtime"


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(host: str, api_key: str | None) -> str | None:
    """The key to enforce: the flag, else the environment; required off loopback."""
    key = api_key or os.environ.get(API_KEY_ENV) or None
    if key is None and not is_loopback(host):
        raise RuntimeError(
            f"refusing to listen on {host} without an API key: pass --api-key or set {API_KEY_ENV} "
            "(only 127.0.0.1 / localhost may run without one)"
        )
    return key


@dataclass(frozen=True)
class Limits:
    max_event_bytes: int = 15 * 1024 * 1024
    events_per_second: float = 200.0  # sustained; 20 ms audio packets are 50/s
    event_burst: int = 400
    max_session_s: float = 3600.0
    max_audio_per_event_s: float = 2.0  # the tail of a longer packet is kept (the session drops older input)
    max_text_chars: int = 16_384  # per text content; text enters the model one token per micro-turn
    max_items: int = 1000  # conversation record kept per session (oldest dropped)
    max_video_pixels: int = 4096 * 4096  # per camera frame (microturn.video.frame)
    max_video_bytes: int = 8 * 1024 * 1024  # per encoded camera frame
    max_outbox_events: int = 2000  # server events queued for a client that does not read: then it is dropped


@dataclass(frozen=True)
class Admission:
    allowed: bool
    reason: str = ""
    subprotocol: str | None = None


class AccessPolicy:
    def __init__(self, host: str, api_key: str | None, allowed_origins: tuple[str, ...] = ()):
        self.loopback = is_loopback(host)
        self.api_key = api_key
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}

    def admit(self, headers: Mapping[str, str], subprotocols: list[str]) -> Admission:
        """Decide on a WebSocket upgrade from its headers and offered subprotocols."""
        host = headers.get("host", "")
        if self.loopback and not is_loopback(urlsplit(f"//{host}").hostname or ""):
            return Admission(False, f"Host {host!r} is not loopback")
        origin = headers.get("origin")
        if origin is not None and not self._origin_ok(origin, host):
            return Admission(False, f"origin {origin!r} is not allowed")
        if self.api_key is not None and not self._key_ok(headers, subprotocols):
            return Admission(False, "missing or wrong API key")
        return Admission(
            True, subprotocol=REALTIME_SUBPROTOCOL if REALTIME_SUBPROTOCOL in subprotocols else None
        )

    def _origin_ok(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        parts = urlsplit(origin)
        return (
            parts.scheme in ("http", "https") and parts.netloc == host.lower()
        ) or origin in self.allowed_origins

    def _key_ok(self, headers: Mapping[str, str], subprotocols: list[str]) -> bool:
        offered = []
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            offered.append(token.strip())
        offered += [
            p[len(KEY_SUBPROTOCOL_PREFIX) :] for p in subprotocols if p.startswith(KEY_SUBPROTOCOL_PREFIX)
        ]
        expected = self.api_key.encode()  # type: ignore[union-attr]
        return any(hmac.compare_digest(k.encode(), expected) for k in offered)


class RateLimiter:
    """Token bucket: `rate` events per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.last = float(burst), clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
