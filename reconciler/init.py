"""``reconciler init``: the daemon's configuration for a new node, from a repo URL and a name.

Before it writes anything it reads the branch's head from the remote, through the same hardened
git the daemon uses, so that a node is never left with a configuration for a repo it cannot
read. The file is written atomically with mode 0600 (the URL may hold a token) and is checked to
load as the daemon will load it; an existing one is replaced only when asked to.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reconciler.config import Config, parse_config
from reconciler.errors import ConfigError, ReconcilerError, SourceError
from reconciler.fs import atomic_write
from reconciler.source.git import Mirror, check_url, shown_url

DEFAULT_CONFIG = Path("/etc/reconciler/config.yaml")
# A host name or FQDN: what nodes.yaml and data/nodes/<name>.yaml are keyed by.
_NODE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})$")


@dataclass(frozen=True)
class Initialized:
    config: Config
    commit: str  # the branch's head when it was checked
    branch: str


def render(url: str, node: str, branch: str) -> str:
    """The configuration file's text. Values are JSON strings, which YAML reads as they are."""
    return (
        "# reconciler daemon configuration, written by `reconciler init`. Every other key has its\n"
        "# default; config.example.yaml in reconciler's documentation lists them all.\n"
        f"node: {json.dumps(node)}\n"
        "source:\n"
        f"  url: {json.dumps(url)}\n"
        f"  branch: {json.dumps(branch)}\n"
    )


def check_readable(url: str, branch: str | None, timeout: float) -> tuple[str, str]:
    """(commit, branch) of the remote's branch (its default branch when None), or a SourceError
    that names the URL with any password hidden."""
    with tempfile.TemporaryDirectory(prefix="reconciler-init-") as scratch:
        try:
            return Mirror(url, Path(scratch), timeout).remote_head(branch)
        except SourceError as exc:
            message = str(exc).replace(url, shown_url(url))
            shown = shown_url(url)
            if not message.startswith(shown):
                message = f"{shown}: {message}"
            raise SourceError(f"cannot read the control repo: {message}") from None


def init(
    path: Path,
    url: str,
    node: str,
    branch: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
) -> Initialized:
    """Check the repo can be read, then write the configuration at ``path``."""
    if not _NODE.match(node):
        raise ConfigError(f"node name {node!r}: use a host name (letters, digits, '.', '-', '_')")
    check_url(url)
    if path.exists() and not force:
        raise ReconcilerError(f"{path} exists; --force replaces it")
    commit, found = check_readable(url, branch, timeout)
    text = render(url, node, found)
    config = parse_config(text, str(path))  # as the daemon reads it: a bug here writes nothing
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True)
        atomic_write(path, text.encode(), mode=0o600)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the configuration: {exc.strerror}") from None
    return Initialized(config, commit, found)
