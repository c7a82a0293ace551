"""A new content's temporary file has its final owner and mode before any byte.

Observed from outside, without mocks: inotify reports, in the order the kernel performed them,
the temporary's creation, its attribute changes (fchown, fchmod: IN_ATTRIB) and its writes
(IN_MODIFY). Every attribute change must come before the first write and none after it, and
the file renamed into place must have the mode and owner asked for: so the content never sat in
a file with any other owner or mode. The temporary is created with mode 0600, so before its
final mode nobody but its creator can open it.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import pytest

from reconciler.fs import TMP_MARK, Staged
from reconciler.resources.base import Context
from reconciler.resources.file import File
from reconciler.resources.line import Line
from tests.resources.conftest import make

IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE = 0x2, 0x4, 0x40, 0x80, 0x100
_libc = ctypes.CDLL(None, use_errno=True)


class Inotify:
    """The events of one directory, as inotify(7) queues them."""

    def __init__(self, directory: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            pytest.skip("no inotify")
        mask = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
        if _libc.inotify_add_watch(self.fd, bytes(directory), mask) < 0:
            pytest.skip("cannot watch the directory")

    def events(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        try:
            while True:
                try:
                    data = os.read(self.fd, 1 << 16)
                except BlockingIOError:
                    return out
                offset = 0
                while offset < len(data):
                    _, mask, _, length = struct.unpack_from("iIII", data, offset)
                    name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                    out.append((name, mask))
                    offset += 16 + length
        finally:
            os.close(self.fd)


def check_order(events: list[tuple[str, int]], final: str) -> None:
    created = [name for name, mask in events if mask & IN_CREATE and TMP_MARK in name]
    assert len(created) == 1, events
    tmp = created[0]
    masks = [mask for name, mask in events if name == tmp]
    assert masks[0] & IN_CREATE, events
    writes = [i for i, mask in enumerate(masks) if mask & IN_MODIFY]
    assert writes, events
    first_write = writes[0]
    assert any(mask & IN_ATTRIB for mask in masks[:first_write]), events
    assert not any(mask & IN_ATTRIB for mask in masks[first_write:]), events
    assert masks[-1] & IN_MOVED_FROM, events
    moved = [i for i, (name, mask) in enumerate(events) if name == final and mask & IN_MOVED_TO]
    assert moved, events
    # Nothing changes the attributes of the file once it holds the content, under any name.
    assert not any(mask & IN_ATTRIB for _, mask in events[moved[0] :]), events


@pytest.mark.parametrize("existing", [True, False], ids=["replace-0644", "create"])
@pytest.mark.parametrize("staged", [False, True], ids=["at-once", "engine-batch"])
def test_the_temporary_has_its_owner_and_mode_before_any_content(
    ctx: Context, existing: bool, staged: bool
) -> None:
    etc = ctx.root.prefix / "etc"
    if existing:
        (etc / "secret").write_text("world-readable before\n")
        (etc / "secret").chmod(0o644)
    owner = "1234" if os.geteuid() == 0 else str(os.geteuid())
    resource = make(
        File, "/etc/secret", content="s3cret\n" * 1000, mode="0600", owner=owner, group=owner
    )
    watch = Inotify(etc)
    if staged:  # as the engine does for inline resources: stage, then commit the batch
        batch: list[Staged] = []
        resource.check_apply(ctx.staged(batch), True)
        assert len(batch) == 1
        for item in batch:
            item.commit()
    else:
        resource.check_apply(ctx, True)
    check_order(watch.events(), "secret")
    st = (etc / "secret").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, int(owner), int(owner))
    assert (etc / "secret").read_text() == "s3cret\n" * 1000


def test_a_line_edit_keeps_the_files_owner_and_mode_from_the_start(ctx: Context) -> None:
    conf = ctx.root.prefix / "etc/app.conf"
    conf.write_text("a=1\n")
    conf.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(conf, 1234, 1234)
    st = conf.stat()
    watch = Inotify(conf.parent)
    make(Line, "b=2", path="/etc/app.conf").check_apply(ctx, True)
    check_order(watch.events(), "app.conf")
    after = conf.stat()
    assert (after.st_mode, after.st_uid, after.st_gid) == (st.st_mode, st.st_uid, st.st_gid)
    assert conf.read_text() == "a=1\nb=2\n"
