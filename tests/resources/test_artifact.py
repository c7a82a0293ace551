"""artifact against an HTTP server on 127.0.0.1: good, wrong checksum, truncated, hostile."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reconciler.errors import ResourceError
from reconciler.resources.artifact import Artifact
from reconciler.resources.base import Context
from tests.conftest import tree_hash
from tests.resources.conftest import make


def tar_gz(
    members: dict[str, bytes],
    links: dict[str, str] | None = None,
    *,
    hardlinks: dict[str, str] | None = None,
    special: dict[str, bytes] | None = None,
    mode: int = 0o644,
) -> bytes:
    """A tar.gz of regular files (with ``mode``), then symlinks, hardlinks and special files
    (by tar type), in that order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
        for kind, entries in ((tarfile.SYMTYPE, links), (tarfile.LNKTYPE, hardlinks)):
            for name, target in (entries or {}).items():
                info = tarfile.TarInfo(name)
                info.type = kind
                info.linkname = target
                info.mode = mode  # as tar records a hardlink: with its file's mode
                tar.addfile(info)
        for name, kind in (special or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            tar.addfile(info)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/truncated.tar.gz":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"x" * 100)
            return
        super().do_GET()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_release_is_downloaded_verified_and_swapped(ctx: Context, served: tuple[str, Path]) -> None:
    url, www = served
    v1 = tar_gz({"bin/app": b"v1\n", "README": b"one\n"})
    v2 = tar_gz({"bin/app": b"v2\n"})
    (www / "v1.tar.gz").write_bytes(v1)
    (www / "v2.tar.gz").write_bytes(v2)
    (ctx.root.prefix / "opt").mkdir(exist_ok=True)
    first = make(Artifact, "/opt/app", url=f"{url}/v1.tar.gz", sha256=sha(v1), extract="tar.gz")
    assert [c.after for c in first.check_apply(ctx, False)] == [sha(v1)]
    assert not (ctx.root.prefix / "opt/app").exists()
    first.check_apply(ctx, True)
    assert (ctx.root.prefix / "opt/app/bin/app").read_text() == "v1\n"
    assert first.check_apply(ctx, False) == []
    make(
        Artifact, "/opt/app", url=f"{url}/v2.tar.gz", sha256=sha(v2), extract="tar.gz"
    ).check_apply(ctx, True)
    assert (ctx.root.prefix / "opt/app/bin/app").read_text() == "v2\n"
    assert not (ctx.root.prefix / "opt/app/README").exists()
    assert sorted(p.name for p in (ctx.root.prefix / "opt").iterdir()) == ["app"]


def test_wrong_checksum_leaves_the_destination_as_it_was(
    ctx: Context, served: tuple[str, Path]
) -> None:
    url, www = served
    good = tar_gz({"app": b"good\n"})
    (www / "good.tar.gz").write_bytes(good)
    (www / "evil.tar.gz").write_bytes(tar_gz({"app": b"evil\n"}))
    make(
        Artifact, "/opt/app", url=f"{url}/good.tar.gz", sha256=sha(good), extract="tar.gz"
    ).check_apply(ctx, True)
    before = tree_hash(ctx.root.prefix)
    with pytest.raises(ResourceError, match="checksum mismatch"):
        make(
            Artifact, "/opt/app", url=f"{url}/evil.tar.gz", sha256="0" * 64, extract="tar.gz"
        ).check_apply(ctx, True)
    with pytest.raises(ResourceError, match="download failed"):
        make(
            Artifact, "/opt/app", url=f"{url}/truncated.tar.gz", sha256="1" * 64, extract="tar.gz"
        ).check_apply(ctx, True)
    assert tree_hash(ctx.root.prefix) == before
    assert not list((ctx.state_dir / "artifacts").glob("*.part"))


@pytest.mark.parametrize(
    "archive",
    [
        tar_gz({"../escape": b"x"}),
        tar_gz({"/etc/owned": b"x"}),
        tar_gz({"ok": b"x"}, links={"link": "/etc/shadow"}),
        tar_gz({"ok": b"x"}, links={"lib/up": "../.."}),
        # Each link alone stays inside; together they climb out: here is "." and up is here/..
        tar_gz({}, links={"up": "here/..", "here": "."}),
        tar_gz({"d/f": b"x"}, links={"d/l": "."}, hardlinks={"d/l/f2": "d/f"}),
        tar_gz({"ok": b"x"}, hardlinks={"h": "../../etc/shadow"}),
        tar_gz({"ok": b"x"}, special={"dev": tarfile.CHRTYPE}),
        tar_gz({"ok": b"x"}, special={"pipe": tarfile.FIFOTYPE}),
    ],
    ids=[
        "dotdot",
        "absolute",
        "symlink-out",
        "symlink-climbing",
        "symlink-chain",
        "member-through-a-link",
        "hardlink-out",
        "device",
        "fifo",
    ],
)
def test_hostile_tar_members_are_refused(
    ctx: Context, served: tuple[str, Path], archive: bytes
) -> None:
    url, www = served
    (www / "bad.tar.gz").write_bytes(archive)
    before = tree_hash(ctx.root.prefix)
    with pytest.raises(ResourceError, match="unsafe archive"):
        make(
            Artifact, "/opt/app", url=f"{url}/bad.tar.gz", sha256=sha(archive), extract="tar.gz"
        ).check_apply(ctx, True)
    assert tree_hash(ctx.root.prefix) == before
    assert not (ctx.root.prefix.parent / "escape").exists()


def test_links_inside_the_release_are_kept_and_modes_tamed(
    ctx: Context, served: tuple[str, Path]
) -> None:
    url, www = served
    release = tar_gz(
        {"lib/libx.so.1": b"ELF", "bin/tool": b"#!/bin/sh\n"},
        links={"lib/libx.so": "libx.so.1", "bin/libx": "../lib/libx.so"},
        hardlinks={"bin/tool2": "bin/tool"},
        mode=0o6777,  # setuid, setgid, world-writable: none of it survives
    )
    (www / "rel.tar.gz").write_bytes(release)
    make(
        Artifact, "/opt/rel", url=f"{url}/rel.tar.gz", sha256=sha(release), extract="tar.gz"
    ).check_apply(ctx, True)
    top = ctx.root.prefix / "opt/rel"
    assert os.readlink(top / "lib/libx.so") == "libx.so.1"
    assert (top / "bin/libx").read_bytes() == b"ELF"
    assert os.stat(top / "bin/tool2").st_ino == os.stat(top / "bin/tool").st_ino
    assert stat.S_IMODE(os.stat(top / "bin/tool").st_mode) == 0o755


def test_hostile_zip_is_refused_and_plain_files_work(
    ctx: Context, served: tuple[str, Path]
) -> None:
    url, www = served
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../../escape", b"x")
    bad = buf.getvalue()
    (www / "bad.zip").write_bytes(bad)
    with pytest.raises(ResourceError, match=r"unsafe archive refused: member .* would leave"):
        make(Artifact, "/opt/z", url=f"{url}/bad.zip", sha256=sha(bad), extract="zip").check_apply(
            ctx, True
        )
    (www / "tool.bin").write_bytes(b"\x7fELF")
    make(Artifact, "/opt/tool", url=f"{url}/tool.bin", sha256=sha(b"\x7fELF")).check_apply(
        ctx, True
    )
    assert (ctx.root.prefix / "opt/tool/tool.bin").read_bytes() == b"\x7fELF"


def test_only_http_https_and_file_urls() -> None:
    assert Artifact.validate("/opt/x", {"url": "ftp://h/x", "sha256": "0" * 64})
    assert Artifact.validate("/opt/x", {"url": "https://h/x", "sha256": "abc"})
    assert not Artifact.validate("/opt/x", {"url": "https://h/x", "sha256": "0" * 64})


class TestFileUrls:
    """A ``file://`` URL names a file inside the root, reached as managed files are."""

    def test_the_file_is_read_inside_the_root_never_from_the_host(
        self, ctx: Context, tmp_path: Path
    ) -> None:
        host = tmp_path / "host-only" / "release.bin"
        host.parent.mkdir()
        host.write_bytes(b"on the host\n")
        url = f"file://{host}"
        with pytest.raises(ResourceError, match="download failed: No such file or directory"):
            make(Artifact, "/opt/tool", url=url, sha256=sha(b"on the host\n")).check_apply(
                ctx, True
            )
        assert not (ctx.root.prefix / "opt/tool").exists()
        inside = ctx.root.prefix / str(host).lstrip("/")
        inside.parent.mkdir(parents=True)
        inside.write_bytes(b"in the root\n")
        make(Artifact, "/opt/tool", url=url, sha256=sha(b"in the root\n")).check_apply(ctx, True)
        assert (ctx.root.prefix / "opt/tool/release.bin").read_bytes() == b"in the root\n"

    def test_ways_out_of_the_root_are_refused(self, ctx: Context, tmp_path: Path) -> None:
        secret = tmp_path / "secret"
        secret.write_bytes(b"root:$6$hash:19000::::::\n")
        (ctx.root.prefix / "srv/link").symlink_to(secret)
        (ctx.root.prefix / "srv/up").symlink_to("../../..")
        refused = {
            "file:///srv/link": "a symlink, not followed",
            "file:///srv/../../secret": "must not contain '..'",
            f"file://localhost/srv/up{tmp_path}/secret": "No such file or directory",
            f"file://otherhost{secret}": "not a host",
        }
        for url, why in refused.items():
            with pytest.raises(ResourceError, match=re.escape(why)):
                make(Artifact, "/opt/x", url=url, sha256=sha(secret.read_bytes())).check_apply(
                    ctx, True
                )
        assert not (ctx.root.prefix / "opt/x").exists()
        assert list((ctx.state_dir / "artifacts").iterdir()) == []

    def test_a_mismatch_names_only_the_expected_digest(
        self, ctx: Context, served: tuple[str, Path]
    ) -> None:
        """The actual digest would let whoever reads the report check guesses of the file."""
        private = b"a file the agent may read but not show\n"
        (ctx.root.prefix / "etc/private").write_bytes(private)
        url, www = served
        (www / "private").write_bytes(private)
        for source in ("file:///etc/private", f"{url}/private"):
            with pytest.raises(ResourceError) as err:
                make(Artifact, "/opt/x", url=source, sha256="0" * 64).check_apply(ctx, True)
            assert str(err.value) == f"checksum mismatch: expected sha256 {'0' * 64}"
            assert sha(private) not in str(err.value)
