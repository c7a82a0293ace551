"""Health checks for real: an HTTP server on 127.0.0.1 and commands run by the runner."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.apps.health import check
from reconciler.model.apps import Health
from reconciler.resources.runner import Runner


class Answers(http.server.BaseHTTPRequestHandler):
    """Answers each GET with the next status of the server's list (the last one repeats)."""

    def do_GET(self) -> None:
        codes: list[int] = self.server.codes  # type: ignore[attr-defined]
        code = codes.pop(0) if len(codes) > 1 else codes[0]
        self.send_response(code)
        if code in (301, 302):
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(httpd: http.server.HTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/health"


def test_http_2xx_after_retries_is_healthy(server: http.server.HTTPServer) -> None:
    server.codes = [503, 503, 204]  # type: ignore[attr-defined]
    result = check(Health(http=url(server), retries=3, interval=0.01), Runner())
    assert (result.healthy, result.attempts) == (True, 3)
    assert result.message.endswith(": 204")


def test_http_errors_and_redirects_are_unhealthy(server: http.server.HTTPServer) -> None:
    server.codes = [500]  # type: ignore[attr-defined]
    result = check(Health(http=url(server), retries=1, interval=0.01), Runner())
    assert (result.healthy, result.attempts, result.message[-5:]) == (False, 2, ": 500")
    server.codes = [302]  # type: ignore[attr-defined]
    assert not check(Health(http=url(server), retries=0), Runner()).healthy
    closed = "http://127.0.0.1:1/health"
    refused = check(Health(http=closed, retries=0, timeout=2), Runner())
    assert not refused.healthy and "refused" in refused.message.lower()


def test_a_command_is_retried_until_it_passes(tmp_path: Path) -> None:
    counter = tmp_path / "tries"
    script = f"echo x >> {counter}; test $(wc -l < {counter}) -ge 3"
    result = check(Health(command=script, retries=5, interval=0.01), Runner())
    assert (result.healthy, result.attempts) == (True, 3)
    failing = check(Health(command=["/bin/sh", "-c", "echo broken; exit 3"], retries=0), Runner())
    assert not failing.healthy and failing.message.endswith("exit 3: broken")


def test_a_command_past_its_timeout_fails(tmp_path: Path) -> None:
    result = check(Health(command="sleep 30", timeout=0.2, retries=0), Runner())
    assert not result.healthy and "timed out after 0.2s" in result.message
