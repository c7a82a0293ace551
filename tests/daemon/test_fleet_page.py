"""The daemon's fleet page, /fleet and /fleet.json: three real daemons sharing one coordination
store, each publishing its run summary; the page read as served, and in a real headless
Chromium (a screenshot and the DOM it built)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reconciler.apps import fleet
from reconciler.apps.store import LocalStore
from tests.apps.test_fleet import REPO, summary
from tests.conftest import need, wait_for
from tests.daemon.conftest import Daemon, GitServer

NODES = ("web-1", "web-2", "bad-1")
HOSTILE = "<script>alert('node')</script>"
CHROMIUM_TIMEOUT = 90  # seconds for one headless Chromium run


class Node(Daemon):
    """The test daemon with a node name and a coordination directory shared with others."""

    def __init__(self, tmp: Path, url: str, node: str, coordination: Path) -> None:
        self.node, self.coordination = node, coordination
        super().__init__(tmp / node, url, poll_interval="1s")

    def write_config(self, extra: str = "") -> None:
        super().write_config(f"coordination:\n  backend: local\n  path: {self.coordination}\n")
        self.config.write_text(
            self.config.read_text().replace("node: node-1", f"node: {self.node}")
        )


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[dict[str, Node]]:
    git = GitServer(tmp_path)
    git.push(REPO, "a web role and a broken one")
    git.start()
    coordination = tmp_path / "coordination"
    nodes = {name: Node(tmp_path, git.url, name, coordination) for name in NODES}
    try:
        for node in nodes.values():
            node.start()
        store = LocalStore(coordination)
        wait_for(lambda: set(store.records("summary")) == set(NODES), 90, "three summaries")
        # A node of the fleet that is hostile (or merely oddly named) publishes markup.
        hostile = summary(
            HOSTILE,
            role="<b>",
            ended=time.time(),
            result="failed",
            message="<img src=x onerror=alert(1)>",
        )
        store.publish_record("summary", HOSTILE, fleet.encode(hostile), ttl=600)
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()
            node.notify.close()
        git.stop()


class Rows(HTMLParser):
    """The fleet table's body rows: (class, data-result, cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, list[str]]] = []
        self.scripts = 0
        self._in_body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "img"):
            self.scripts += 1
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append((a.get("class") or "", a.get("data-result") or "", []))
        elif tag == "td" and self.rows and self._in_body:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1][2].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> Rows:
    rows = Rows()
    rows.feed(page)
    return rows


def chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess[bytes]:
    profile = tmp / "chromium-profile"
    try:
        return subprocess.run(
            [
                need("chromium"),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            timeout=CHROMIUM_TIMEOUT,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and every pixel (RGB or RGBA bytes) of an 8-bit PNG, unfiltered."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * bpp
    assert len(raw) == height * (stride + 1)
    previous = bytearray(stride)
    pixels: list[bytes] = []
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = previous[i]
            corner = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                guess = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + guess) & 0xFF
        pixels += [bytes(line[i : i + 3]) for i in range(0, stride, bpp)]
        previous = line
    return width, height, pixels


def test_the_fleet_page_shows_every_node_and_marks_the_failed_one(
    daemons: dict[str, Node],
) -> None:
    web1 = daemons["web-1"]
    code, index = web1.get("/")
    assert code == 200 and b"<a href=/fleet>fleet</a>" in index
    code, body = web1.get("/fleet")
    assert code == 200
    page = body.decode()
    # Names and messages from the store are text, never markup.
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;node&#x27;)&lt;/script&gt;" in page
    rows = parse(page)
    assert rows.scripts == 0
    by_node = {cells[0]: (cls, result, cells) for cls, result, cells in rows.rows}
    assert set(by_node) == {*NODES, HOSTILE}
    assert by_node["bad-1"][:2] == ("bad", "failed")
    assert by_node["bad-1"][2][1] == "bad" and by_node["bad-1"][2][7] == "1"  # role, failed
    assert "failed: exec:broken" in by_node["bad-1"][2][9]
    assert by_node["web-1"][:2] == ("", "changed") or by_node["web-1"][:2] == ("", "in_sync")

    # Filters, and the same rows as JSON.
    code, body = web1.get("/fleet?state=failed")
    assert {cells[0] for _, _, cells in parse(body.decode()).rows} == {"bad-1", HOSTILE}
    code, body = web1.get("/fleet.json?role=web")
    assert code == 200
    assert [n["node"] for n in json.loads(body)["nodes"]] == ["web-1", "web-2"]
    assert web1.get("/fleet?state=sad")[0] == 400


def test_a_headless_chromium_renders_the_fleet_page(
    daemons: dict[str, Node], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{daemons['web-2'].port}/fleet"
    shot = tmp_path / "fleet.png"
    done = chromium([f"--screenshot={shot}", "--window-size=1200,800", url], tmp_path)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 800)
    colours = Counter(pixels)
    assert len(colours) > 20, "a blank page"
    assert colours.most_common(1)[0][1] < 0.98 * len(pixels), "nearly one colour"
    assert colours[bytes((0xFF, 0xDD, 0xDD))] > 1000, "no row is marked failed (#fdd)"

    done = chromium(["--dump-dom", url], tmp_path)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    dom = parse(done.stdout.decode())
    assert dom.scripts == 0  # the hostile name stayed text in the DOM Chromium built
    by_node = {cells[0]: (cls, result, cells[4]) for cls, result, cells in dom.rows}
    assert set(by_node) == {*NODES, HOSTILE}
    assert by_node["bad-1"] == ("bad", "failed", "failed")
    assert by_node[HOSTILE][:2] == ("bad", "failed")
    for node in ("web-1", "web-2"):
        assert by_node[node][0] == "" and by_node[node][2] in ("changed", "in_sync")
