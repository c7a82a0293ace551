"""line: one line in a file, added, replaced (by a regex) or removed, like Puppet's file_line.

The type key is ``line``, so the line itself cannot be an attribute of that name: it is the
``text`` attribute, or the title when ``text`` is not given.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Mapping
from typing import ClassVar

from reconciler.errors import ResourceError
from reconciler.resources._path import text_diff
from reconciler.resources.base import Attr, Change, Context, Resource, register


@register
class Line(Resource):
    type = "line"
    inline = True
    secret_attributes = ("text",)
    attributes: ClassVar[Mapping[str, Attr]] = {
        "path": Attr("str", required=True),
        "text": Attr("str", doc="the line; default: the title"),
        "match": Attr("str", doc="a regex: the first line it matches is replaced"),
        "ensure": Attr("str", default="present", choices=("present", "absent")),
    }

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, object]) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        path = str(attrs.get("path") or "")
        if not path.startswith("/") or ".." in path.split("/"):
            problems.append(("path", f"{path!r} must be an absolute path without '..'"))
        if "\n" in str(attrs.get("text") or title):
            problems.append(("text" if attrs.get("text") else None, "must be a single line"))
        if attrs.get("match") is not None:
            try:
                re.compile(str(attrs["match"]))
            except re.error as exc:
                problems.append(("match", f"not a valid regex: {exc}"))
        return problems

    def autorequire(self) -> list[str]:
        return [f"file:{self.attrs['path']}"]

    def serial_key(self) -> str:
        return f"file:{self.attrs['path']}"

    def _edit(self, text: str) -> str:
        lines = text.splitlines()
        want = str(self.attrs.get("text") or self.title)
        pattern = re.compile(str(self.attrs["match"])) if self.attrs.get("match") else None
        if self.attrs.get("ensure") == "absent":
            kept = [
                line
                for line in lines
                if not (line == want or (pattern is not None and pattern.search(line)))
            ]
            return "\n".join(kept) + ("\n" if kept else "")
        if want in lines:
            if pattern is None:
                return text
            # The wanted line is there: drop other lines the regex matches (a stale duplicate).
            out, seen = [], False
            for line in lines:
                if line == want and not seen:
                    seen = True
                    out.append(line)
                elif not (pattern.search(line) and line != want):
                    out.append(line)
            return "\n".join(out) + "\n"
        if pattern is not None:
            for i, line in enumerate(lines):
                if pattern.search(line):
                    lines[i] = want
                    return "\n".join(lines) + "\n"
        return text + ("" if not text or text.endswith("\n") else "\n") + want + "\n"

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        path = str(self.attrs["path"])
        place = ctx.root.locate(path)
        st = place.lstat()
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size > ctx.max_file_size:
            raise ResourceError(
                f"{path}: the file is {st.st_size} bytes, more than the limit of "
                f"{ctx.max_file_size} bytes (reconcile.max_file_size); not read, not edited"
            )
        try:
            old = place.read_bytes()
        except FileNotFoundError:
            if self.attrs.get("ensure") == "absent":
                return []
            raise ResourceError(f"{path} does not exist (manage it with a file resource)") from None
        except IsADirectoryError:
            raise ResourceError(f"{path} is a directory") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ResourceError(f"{path} is a symlink: not followed") from None
            raise ResourceError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            text = old.decode()
        except UnicodeDecodeError:
            raise ResourceError(f"{path} is not UTF-8 text") from None
        new = self._edit(text)
        if new == text:
            return []
        data = new.encode()
        diff = None if self.sensitive else text_diff(path, old, data)
        before = "sha256:" + hashlib.sha256(old).hexdigest()
        after = "sha256:" + hashlib.sha256(data).hexdigest()
        if apply:
            try:
                ctx.backup(place, path)
            except OSError as exc:
                raise ResourceError(
                    f"{path}: backup failed, not changed: {exc.strerror or exc}"
                ) from None
            try:
                ctx.write_file(place, data, None, None, None)
            except OSError as exc:
                raise ResourceError(
                    f"{path}: cannot write: {os.strerror(exc.errno or 0)}"
                ) from None
            ctx.fingerprints.pop(path, None)
        return [Change("line", before, after, diff)]
