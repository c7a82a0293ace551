"""The HTTP endpoints: /metrics, /healthz, /readyz, /status, /, /fleet, /fleet.json and POST
/webhook.

Handlers read the agent's state as it stands and never wait for a run. Bodies are bounded and
read with a timeout, so a slow or huge request cannot hold the listener. A whole request has a
deadline (``http.request_timeout``), after which its connection is cut however slowly it still
trickles in, and at most ``http.max_connections`` are open at once: past that a new connection
is answered 503 and closed at once, without a thread.
"""

from __future__ import annotations

import contextlib
import html
import json
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from reconciler import __version__
from reconciler.apps import fleet
from reconciler.apps.store import CoordinationConfig, Store, StoreError, open_store
from reconciler.daemon.webhook import MAX_BODY

if TYPE_CHECKING:
    from reconciler.daemon.agent import Agent

READ_TIMEOUT = 10.0
FLEET_CACHE = 2.0  # seconds the fleet page reuses what it read from the store


@dataclass(frozen=True)
class FleetView:
    summaries: list[fleet.RunSummary] = field(default_factory=list)
    error: str | None = None  # the store could not be read


class FleetReader:
    """The run summaries for /fleet, read through a store of its own (the agent's is watched:
    reading it here would move where its watch starts), at most once per ``FLEET_CACHE``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._config: CoordinationConfig | None = None
        self._read_at = -FLEET_CACHE
        self._view = FleetView()

    def view(self, agent: Agent) -> FleetView:
        with self._lock:
            if time.monotonic() - self._read_at < FLEET_CACHE:
                return self._view
            config = agent.config.coordination
            warnings: list[str] = []
            try:
                if self._store is None or self._config != config:
                    self.close()
                    self._store, self._config = open_store(config), config
                self._view = FleetView(fleet.read(self._store, warnings.append))
            except StoreError as exc:
                self._view = FleetView(error=str(exc))
            for warning in warnings[:10]:
                agent.log.warning("fleet", message=warning)
            self._read_at = time.monotonic()
            return self._view

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = f"reconciler/{__version__}"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(min(READ_TIMEOUT, self.server.deadline))

    def handle_one_request(self) -> None:
        super().handle_one_request()
        self.server.arm(self.connection)  # the next request on this connection: a new deadline

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are counted, not logged line by line

    def _send(
        self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        agent = self.server.agent
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, agent.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            if agent.state.applied:
                self._send(200, b"ready\n")
            else:
                self._send(503, b"no good revision applied yet\n")
        elif path == "/status":
            self._send(200, json.dumps(status(agent), indent=2).encode(), "application/json")
        elif path == "/":
            self._send(200, page(status(agent)).encode(), "text/html; charset=utf-8")
        elif path in ("/fleet", "/fleet.json"):
            self._fleet(path.endswith(".json"))
        else:
            self._send(404, b"not found\n")

    def _fleet(self, as_json: bool) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        role = (query.get("role") or [""])[0] or None
        state = (query.get("state") or [""])[0] or None
        if state is not None and state not in fleet.STATES:
            self._send(400, f"state is one of {', '.join(fleet.STATES)}\n".encode())
            return
        view = self.server.fleet.view(self.server.agent)
        rows = fleet.fleet_rows(view.summaries, role=role, state=state)
        if as_json:
            body = {"nodes": [r.to_dict() for r in rows], "error": view.error}
            self._send(200, json.dumps(body, indent=2).encode(), "application/json")
        else:
            text = fleet_page(rows, view.error, self.server.agent.state.node, role, state)
            self._send(200, text.encode(), "text/html; charset=utf-8")

    def do_POST(self) -> None:
        agent = self.server.agent
        if self.path.split("?", 1)[0] != "/webhook":
            self._send(404, b"not found\n")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._result(411 if "Content-Length" not in self.headers else 400, "bad_request")
            return
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._result(413, "too_large")
            return
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            self._result(408, "bad_request")
            return
        verdict = agent.verifier.check(dict(self.headers.items()), body)
        code = {"accepted": 202, "duplicate": 200, "disabled": 404, "unauthorized": 401}[verdict]
        if verdict == "accepted":
            agent.log.info("webhook accepted; polling now")
            agent.request("poll")
        self._result(code, verdict)

    def _result(self, code: int, result: str) -> None:
        self.server.agent.metrics.webhooks.labels(result).inc()
        self._send(code, (result + "\n").encode())


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 22\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\r\n"
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # a burst of connections is accepted (and refused) at once

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        self.agent = agent
        self.fleet = FleetReader()
        # Open connections and when each must have been answered (monotonic seconds).
        self._open: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    # Read at each connection, so SIGHUP changes them too.
    @property
    def deadline(self) -> float:
        return self.agent.config.http.request_timeout

    @property
    def max_connections(self) -> int:
        return self.agent.config.http.max_connections

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = len(self._open) >= self.max_connections
            if not full:
                self._open[request] = time.monotonic() + self.deadline
        if full:
            self._refuse(request)
            return
        super().process_request(request, client_address)

    def _refuse(self, request: socket.socket) -> None:
        """Too many open connections: a 503, if the socket takes it at once, and close."""
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(_BUSY)
        super().shutdown_request(request)

    def arm(self, request: socket.socket) -> None:
        with self._lock:
            if request in self._open:
                self._open[request] = time.monotonic() + self.deadline

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def service_actions(self) -> None:
        """Between polls of the listener: cut the connections past their deadline. Their
        handler's blocked read or write returns, and its thread ends."""
        now = time.monotonic()
        with self._lock:
            late = [request for request, deadline in self._open.items() if deadline < now]
            for request in late:
                self._open[request] = float("inf")  # cut once
        for request in late:
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request that failed: one log event, not a traceback on stderr. A client that
        went away before the answer was written is nothing to report."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            return
        self.agent.log.error("http request failed", client=str(client_address), error=repr(error))


class HttpServer:
    def __init__(self, agent: Agent) -> None:
        host, _, port = agent.config.listen.rpartition(":")
        self.server = _Server((host.strip("[]"), int(port)), agent)
        bound = self.server.server_address
        self.address = f"{bound[0]!s}:{bound[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.25,), name="http", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.server.fleet.close()


def status(agent: Agent) -> dict[str, Any]:
    s = agent.state
    report = s.last_report or {}
    resources = report.get("resources", [])
    return {
        "node": s.node or report.get("node"),
        "revision": s.revision,
        "branch": s.branch,
        "ready": s.applied,
        "suspended": s.suspended,
        "source_error": s.source_error,
        "last_error": s.last_error,
        "rejected": s.rejected,
        "uptime_seconds": round(time.time() - s.started, 1),
        "last_run": {
            k: report.get(k)
            for k in (
                *("run_id", "started", "duration_seconds", "noop", "compiled", "summary"),
                "errors",
            )
        }
        if report
        else None,
        "drifted": [r["id"] for r in resources if r["status"] == "would_change"],
        "changed": [r["id"] for r in resources if r["status"] == "changed"],
        "failed": [
            {"id": r["id"], "error": r["error"]} for r in resources if r["status"] == "failed"
        ],
        "apps": report.get("apps", []),
    }


def page(data: dict[str, Any]) -> str:
    e = html.escape

    def items(values: list[Any]) -> str:
        if not values:
            return "<p class=none>none</p>"
        rows = "".join(
            f"<li><code>{e(v['id'])}</code> {e(str(v['error']))}</li>"
            if isinstance(v, dict)
            else f"<li><code>{e(v)}</code></li>"
            for v in values
        )
        return f"<ul>{rows}</ul>"

    def apps(values: list[dict[str, Any]]) -> str:
        if not values:
            return "<p class=none>none on this node</p>"
        rows = "".join(
            f"<tr><td><code>{e(a['app'])}/{e(a['component'])}</code></td>"
            f"<td>{e(str(a['version']))}</td><td>{e(a['state'])}</td><td>{e(a['message'])}</td></tr>"
            + "".join(
                f"<tr><td></td><td colspan=3>waits for {e(c)}: "
                f"{e(', '.join(f'{n} {st}' for n, st in nodes.items()) or 'no node has reported')}"
                "</td></tr>"
                for c, nodes in a.get("waits_for", {}).items()
            )
            for a in values
        )
        return f"<table>{rows}</table>"

    run = data.get("last_run") or {}
    summary = run.get("summary") or {}
    banner = ""
    if data.get("suspended"):
        banner += f"<p class=warn>{e(data['suspended'])}</p>"
    if data.get("source_error"):
        banner += f"<p class=warn>source: {e(data['source_error'])}</p>"
    for revision, why in (data.get("rejected") or {}).items():
        banner += f"<p class=warn>rejected {e(revision[:12])}: {e(why)}</p>"
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>reconciler: {e(str(data.get("node")))}</title>
<meta http-equiv=refresh content=10>
<style>body{{font:15px system-ui,sans-serif;margin:2em auto;max-width:56em;color:#222}}
code{{font-size:90%}}.warn{{background:#fee;border-left:4px solid #c33;padding:.4em .8em}}
.none{{color:#888}}td{{padding:.1em 1em .1em 0}}</style></head><body>
<h1>reconciler on {e(str(data.get("node")))}</h1>{banner}
<table><tr><td>revision</td><td><code>{e(str(data.get("revision")))}</code> ({e(str(data.get("branch")))})</td></tr>
<tr><td>last run</td><td>{e(str(run.get("started")))} in {e(str(run.get("duration_seconds")))} s{" (noop)" if run.get("noop") else ""}</td></tr>
<tr><td>resources</td><td>{e(", ".join(f"{k} {v}" for k, v in summary.items()))}</td></tr></table>
<h2>Drifted</h2>{items(data.get("drifted") or [])}
<h2>Failed</h2>{items(data.get("failed") or [])}
<h2>Apps</h2>{apps(data.get("apps") or [])}
<p><a href=/fleet>fleet</a> · <a href=/status>/status</a> · <a href=/metrics>/metrics</a></p>
</body></html>
"""


def fleet_page(
    rows: list[fleet.FleetRow],
    error: str | None,
    node: str | None,
    role: str | None = None,
    state: str | None = None,
) -> str:
    """The fleet page: one table row per node (at most ``fleet.MAX_ROWS``), plain HTML and CSS;
    every name and message from the store is escaped."""
    e = html.escape
    shown = rows[: fleet.MAX_ROWS]
    body = []
    for r in shown:
        result = r.result + (" (noop)" if r.noop else "")
        classes = " ".join(
            c for c in ("bad" if r.result in fleet.BAD else "", "stale" if r.stale else "") if c
        )
        flags = [f for f, on in (("stale", r.stale), ("suspended", r.suspended)) if on]
        body.append(
            f"<tr class='{e(classes)}' data-result='{e(r.result)}'>"
            f"<td>{e(r.node)}</td><td>{e(r.role or '-')}</td>"
            f"<td><code>{e(r.revision or '-')}</code></td>"
            f"<td>{e(fleet.age_text(r.age))} ago</td>"
            f"<td class=result>{e(result)}</td>"
            f"<td class=n>{r.drifted}</td><td class=n>{r.changed}</td><td class=n>{r.failed}</td>"
            f"<td>{e(', '.join(flags))}</td><td class=msg>{e(r.message)}</td></tr>"
        )
    more = len(rows) - len(shown)
    notes = ""
    if error is not None:
        notes += f"<p class=warn>coordination store: {e(error)}</p>"
    if not rows and error is None:
        notes += "<p class=none>no node has published a run summary</p>"
    if more > 0:
        notes += f"<p class=none>{more} more node(s) not shown: filter with ?role= or ?state=</p>"
    bad = sum(1 for r in rows if r.bad)
    filters = " ".join(f"{k} {e(v)}" for k, v in (("role", role), ("state", state)) if v)
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>reconciler fleet</title>
<meta http-equiv=refresh content=10>
<style>body{{font:15px system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse}}th,td{{padding:.2em .8em;text-align:left;border-bottom:1px solid #ddd}}
td.n{{text-align:right}}tr.bad{{background:#fdd}}tr.bad td.result{{color:#a00;font-weight:bold}}
tr.stale{{color:#888;font-style:italic}}td.msg{{max-width:30em;overflow-wrap:anywhere;font-size:90%}}
.warn{{background:#fee;border-left:4px solid #c33;padding:.4em .8em}}.none{{color:#888}}</style>
</head><body>
<h1>Fleet</h1>
<p>{len(rows)} node(s){" with " + filters if filters else ""}, {bad} needing attention;
seen from {e(str(node))}. <a href=/>this node</a> · <a href=/fleet.json>/fleet.json</a></p>
{notes}<table><thead><tr><th>node</th><th>role</th><th>revision</th><th>last run</th>
<th>result</th><th>drifted</th><th>changed</th><th>failed</th><th></th><th>message</th></tr></thead>
<tbody>{"".join(body)}</tbody></table></body></html>
"""
