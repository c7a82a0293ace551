"""Webhook authentication: GitHub, GitLab and a generic HMAC header.

A webhook only asks for a poll: nothing in its payload is trusted or even parsed. The signature
is an HMAC-SHA256 over the raw body as received, compared in constant time.

A body accepted in the last DEDUPE_WINDOW seconds is a duplicate, whatever its delivery id: the
id is not covered by the signature, so whoever captured one signed delivery could otherwise
replay it at will under fresh ids. Duplicates are told by the body's digest, what the signature
covers, from a bounded cache.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

MAX_BODY = 1024 * 1024
DEDUPE_SIZE = 1024
DEDUPE_WINDOW = 600.0  # seconds


def _raw(value: str) -> bytes:
    """A header value as the bytes that were sent: the HTTP server decodes them as Latin-1.

    Compared as bytes, since ``hmac.compare_digest`` refuses str with non-ASCII characters.
    """
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # a str that did not come from the wire
        return value.encode("utf-8", "surrogatepass")


def _signature_ok(secret: bytes, body: bytes, header: str) -> bool:
    header = header.strip()
    if header.startswith("sha256="):
        header = header[7:]
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, _raw(header.lower()))


class WebhookVerifier:
    """Decides whether a delivery may trigger a poll: "accepted", or the reason it may not."""

    def __init__(self, secret: bytes | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.secret = secret
        self.clock = clock
        # The digests of bodies accepted, oldest first, with when they were.
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, headers: Mapping[str, str], body: bytes) -> str:
        if not self.secret:
            return "disabled"
        h = {k.lower(): v for k, v in headers.items()}
        if "x-hub-signature-256" in h:
            ok = _signature_ok(self.secret, body, h["x-hub-signature-256"])
        elif "x-reconciler-signature" in h:
            ok = _signature_ok(self.secret, body, h["x-reconciler-signature"])
        elif "x-gitlab-token" in h:
            ok = hmac.compare_digest(self.secret, _raw(h["x-gitlab-token"]))
        else:
            ok = False
        if not ok:
            return "unauthorized"
        return "accepted" if self._first(body) else "duplicate"

    def _first(self, body: bytes) -> bool:
        """Whether no delivery of this body was accepted within the window; records it."""
        now = self.clock()
        while self._seen and (
            len(self._seen) >= DEDUPE_SIZE or now - next(iter(self._seen.values())) > DEDUPE_WINDOW
        ):
            self._seen.popitem(last=False)
        key = hashlib.sha256(body).hexdigest()
        if key in self._seen:
            return False
        self._seen[key] = now
        return True
