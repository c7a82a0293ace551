"""Fuzz the webhook endpoint: raw HTTP requests through the daemon's handler and verifier.

Each input is the bytes a client sends on one connection (request line, headers, body, possibly
more requests after it). They are fed to the daemon's real request handler
(``reconciler.daemon.http``) over an in-memory connection, which parses them, bounds the body
and asks ``reconciler.daemon.webhook.WebhookVerifier`` for a verdict; the input's head and body
also go to the verifier directly, as a header mapping and raw body. Nothing may raise (the real
server would drop the connection with no answer and print a traceback), and every verdict must
be one of the four.

The verifier's secret is ``fuzz-secret``: the seed corpus holds deliveries signed with it, so
that the accepted and duplicate paths are reached.

    python fuzz/fuzz_webhook.py -max_total_time=60 fuzz/corpus/webhook
    python fuzz/fuzz_webhook.py -max_total_time=600 fuzz/work/webhook fuzz/corpus/webhook
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from typing import Any

import atheris

with atheris.instrument_imports(include=["reconciler", "http.server", "http.client", "email"]):
    import http.client

    import structlog

    from reconciler.daemon.agent import AgentState
    from reconciler.daemon.http import _Handler
    from reconciler.daemon.metrics import Metrics
    from reconciler.daemon.webhook import WebhookVerifier

SECRET = b"fuzz-secret"
VERDICTS = {"accepted", "duplicate", "disabled", "unauthorized"}


class FuzzAgent:
    """The parts of the agent the HTTP handler reads: real metrics, verifier and state; a poll
    request only counts."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.verifier = WebhookVerifier(SECRET)
        self.state = AgentState(node="fuzz-1", started=time.time())
        # The handler logs an accepted delivery: to nowhere, so the fuzzer's output stays readable.
        self.log = structlog.wrap_logger(
            structlog.PrintLogger(open(os.devnull, "w")),  # noqa: SIM115
            wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        )
        self.polls = 0

    def request(self, what: str) -> None:
        assert what == "poll", what
        self.polls += 1


class FuzzServer:
    """What a handler needs of its server."""

    def __init__(self, agent: FuzzAgent) -> None:
        self.agent = agent
        self.server_address = ("127.0.0.1", 0)
        self.lock = threading.Lock()
        self.deadline = 10.0

    def arm(self, connection: object) -> None:
        """A new deadline for the next request: nothing to cut in memory."""


class Connection:
    """A socket stand-in that only answers the handler's timeout setting."""

    def settimeout(self, timeout: float | None) -> None:
        pass


AGENT = FuzzAgent()
SERVER = FuzzServer(AGENT)


def serve(data: bytes) -> bytes:
    """Run the daemon's handler on one connection whose client sent ``data``; its reply."""
    handler: Any = _Handler.__new__(_Handler)
    handler.server = SERVER
    handler.client_address = ("127.0.0.1", 40000)
    handler.request = handler.connection = Connection()
    handler.rfile = io.BytesIO(data)
    handler.wfile = io.BytesIO()
    handler.handle()  # every request on the connection, until the client is done
    reply: bytes = handler.wfile.getvalue()
    return reply


def head_and_body(data: bytes) -> tuple[dict[str, str], bytes]:
    """Headers (as the HTTP server decodes them) and body of a request, split at the blank line."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")[1:]  # the request line is not a header
    try:
        message = http.client.parse_headers(io.BytesIO(b"\r\n".join(lines) + b"\r\n\r\n"))
    except http.client.HTTPException:
        return {}, body
    return dict(message.items()), body


def test_one_input(data: bytes) -> None:
    headers, body = head_and_body(data)
    verifier = WebhookVerifier(SECRET)
    verdict = verifier.check(headers, body)
    assert verdict in VERDICTS, verdict
    assert WebhookVerifier(None).check(headers, body) == "disabled"

    AGENT.verifier = WebhookVerifier(SECRET)  # deliveries seen depend on this input alone
    serve(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
