"""Webhook authentication: GitHub, GitLab and a generic HMAC header.

A webhook only asks for a poll: nothing in its payload is trusted or even parsed. The signature
is an HMAC-SHA256 over the raw body as received, compared in constant time. Deliveries already
seen (by their delivery id) are ignored, from a bounded cache.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping

MAX_BODY = 1024 * 1024
DEDUPE_SIZE = 1024


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

    def __init__(self, secret: bytes | None) -> None:
        self.secret = secret
        self._seen: OrderedDict[str, None] = OrderedDict()

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
        delivery = (
            h.get("x-github-delivery")
            or h.get("x-gitlab-event-uuid")
            or h.get("x-reconciler-delivery")
        )
        if delivery:
            if delivery in self._seen:
                return "duplicate"
            self._seen[delivery] = None
            while len(self._seen) > DEDUPE_SIZE:
                self._seen.popitem(last=False)
        return "accepted"
