"""Inputs the webhook fuzzer (fuzz/fuzz_webhook.py) found raising out of the HTTP handler.

A signature header with a byte above 0x7f reached ``hmac.compare_digest`` as a str with a
non-ASCII character, which raises TypeError: the request thread died, the client got no answer
and the delivery was not counted. Header values are now compared as the bytes that were sent.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct

import pytest

from reconciler.daemon.webhook import WebhookVerifier
from tests.daemon.conftest import Daemon, wait_for


def latin1(raw: bytes) -> str:
    """A header value as the HTTP server hands it over: the bytes decoded as Latin-1."""
    return raw.decode("latin-1")


class TestVerifier:
    @pytest.mark.parametrize("header", ["X-Hub-Signature-256", "X-Reconciler-Signature"])
    def test_a_signature_with_non_ascii_bytes_is_unauthorized(self, header: str) -> None:
        verifier = WebhookVerifier(b"k")
        value = latin1(b"sha256=" + b"0" * 60 + b"\xff\xfe\xe9\x80")
        assert verifier.check({header: value}, b"{}") == "unauthorized"

    def test_a_good_signature_still_passes(self) -> None:
        verifier = WebhookVerifier(b"k")
        digest = hmac.new(b"k", b"{}", hashlib.sha256).hexdigest()
        assert verifier.check({"X-Hub-Signature-256": f"sha256={digest.upper()}"}, b"{}") == (
            "accepted"
        )

    def test_a_gitlab_token_is_compared_as_the_bytes_sent(self) -> None:
        # GitLab sends the token as UTF-8; the secret file holds the same bytes.
        secret = "clé-secrète".encode()
        verifier = WebhookVerifier(secret)
        assert verifier.check({"X-Gitlab-Token": latin1(secret)}, b"") == "accepted"
        assert verifier.check({"X-Gitlab-Token": latin1(b"cl\xe9")}, b"") == "unauthorized"

    def test_a_value_that_is_not_latin1_is_unauthorized_not_an_error(self) -> None:
        verifier = WebhookVerifier(b"k")
        assert verifier.check({"X-Hub-Signature-256": "sha256=\u20ac\ud800"}, b"") == (
            "unauthorized"
        )
        assert verifier.check({"X-Gitlab-Token": "\u20ac\ud800"}, b"") == "unauthorized"


@pytest.fixture
def d(daemon: Daemon) -> Daemon:
    """The daemon, started, its first revision applied."""
    daemon.start()
    wait_for(daemon.ready, what="/readyz")
    return daemon


@pytest.mark.slow
def test_the_daemon_answers_401_to_a_non_ascii_signature_and_keeps_serving(d: Daemon) -> None:
    request = (
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"X-Hub-Signature-256: sha256=\xff\xff\xff\xff\r\n\r\n{}"
    )
    with socket.create_connection(("127.0.0.1", d.port), timeout=5) as sock:
        sock.sendall(request)
        status_line = sock.makefile("rb").readline()
    assert status_line.startswith(b"HTTP/1.1 401 "), status_line
    assert d.metric("reconciler_webhook_requests_total", result="unauthorized") == 1
    assert d.get("/healthz")[0] == 200
    assert "Traceback" not in d.logs()


@pytest.mark.slow
def test_clients_that_reset_their_connection_leave_no_traceback(d: Daemon) -> None:
    """A scraper or load balancer that hangs up abruptly (RST) is not an error to report."""
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"GET /metr")  # half a request line, then a reset
        sock.close()
    assert d.get("/healthz")[0] == 200
    assert "Traceback" not in d.logs()
