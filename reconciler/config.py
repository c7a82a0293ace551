"""The daemon's configuration file: typed, validated as a whole.

Every unknown key and bad value is reported with its line, all at once. Durations are written
``30s``, ``5m``, ``1h`` (or a plain number of seconds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reconciler.apps.store import CoordinationConfig
from reconciler.errors import ConfigError, Location, ModelError, Problem
from reconciler.fs import MAX_FILE_SIZE
from reconciler.model.secrets import SecretsConfig
from reconciler.model.yamlload import LocMap, load
from reconciler.source.verify import Verify
from reconciler.units import parse_duration, parse_size


@dataclass(frozen=True)
class SourceConfig:
    url: str | None = None
    branch: str | None = None
    poll_interval: float = 60.0
    timeout: float = 60.0
    allow_rewind: bool = False
    verify: Verify | None = None


@dataclass(frozen=True)
class ReconcileConfig:
    interval: float = 1800.0
    splay: float = 300.0
    mode: Literal["enforce", "noop"] = "enforce"
    watch: bool = True
    max_file_size: int = MAX_FILE_SIZE  # a managed file past it is not read: it fails alone


@dataclass(frozen=True)
class HttpConfig:
    request_timeout: float = 10.0  # a whole request, from the connection to the answer
    max_connections: int = 32  # open at once; past it a new connection is refused at once


@dataclass(frozen=True)
class LogConfig:
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class Config:
    node: str | None = None
    root: Path = Path("/")
    state_dir: Path = Path("/var/lib/reconciler")
    facts_dirs: tuple[Path, ...] = (Path("/etc/reconciler/facts.d"),)
    source: SourceConfig = field(default_factory=SourceConfig)
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    listen: str = "127.0.0.1:9717"
    http: HttpConfig = field(default_factory=HttpConfig)
    webhook_secret_file: Path | None = None
    coordination: CoordinationConfig = field(default_factory=CoordinationConfig)
    log: LogConfig = field(default_factory=LogConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    path: Path | None = None


class _Reader:
    """Reads typed values out of a LocMap, collecting problems with their lines."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def section(self, parent: LocMap, key: str, allowed: set[str], prefix: str = "") -> LocMap:
        value = parent.get(key)
        if value is None:
            return LocMap.empty(parent.line_of(key))
        if not isinstance(value, LocMap):
            self.fail(parent, key, "must be a mapping", prefix)
            return LocMap.empty()
        self.known(value, allowed, f"{prefix}{key}.")
        return value

    def known(self, mapping: LocMap, allowed: set[str], prefix: str = "") -> None:
        for key in mapping:
            if key not in allowed:
                self.fail(mapping, key, "unknown key", prefix)

    def fail(self, mapping: LocMap, key: str, message: str, prefix: str = "") -> None:
        self.problems.append(
            Problem(message, Location(self.file, mapping.line_of(key), f"{prefix}{key}"))
        )

    def get(
        self, mapping: LocMap, key: str, kind: str, default: Any, prefix: str = "", **opts: Any
    ) -> Any:
        if key not in mapping or mapping[key] is None:
            return default
        value = mapping[key]
        try:
            if kind == "str":
                if not isinstance(value, str):
                    raise ValueError("must be a string")
                choices = opts.get("choices")
                if choices and value not in choices:
                    raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
                return value
            if kind == "bool":
                if not isinstance(value, bool):
                    raise ValueError("must be true or false")
                return value
            if kind == "duration":
                seconds = parse_duration(value)
                if seconds <= 0 and not opts.get("zero_ok"):
                    raise ValueError("must be more than zero")
                return seconds
            if kind == "path":
                if not isinstance(value, str) or not value.startswith("/"):
                    raise ValueError("must be an absolute path")
                return Path(value)
            if kind == "paths":
                items = value if isinstance(value, list) else [value]
                if not all(isinstance(v, str) and v.startswith("/") for v in items):
                    raise ValueError("must be a list of absolute paths")
                return tuple(Path(v) for v in items)
            if kind == "size":
                size = parse_size(value)
                if size < 1:
                    raise ValueError("must be more than zero")
                return size
            if kind == "count":
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError("must be a whole number, at least 1")
                return value
            if kind == "strs":
                items = value if isinstance(value, list) else [value]
                if not all(isinstance(v, str) for v in items):
                    raise ValueError("must be a list of strings")
                return tuple(items)
        except ValueError as exc:
            self.fail(mapping, key, str(exc), prefix)
            return default
        raise AssertionError(kind)


def parse_config(text: bytes | str, name: str) -> Config:
    try:
        raw = load(text, name)
    except ModelError as exc:
        raise ConfigError("\n".join(str(p) for p in exc.problems)) from None
    if raw is None:
        raw = LocMap.empty()
    if not isinstance(raw, LocMap):
        raise ConfigError(f"{name}: the configuration must be a mapping")
    r = _Reader(name)
    r.known(
        raw,
        {
            "node",
            "root",
            "state_dir",
            "facts_dirs",
            "source",
            "reconcile",
            "listen",
            "http",
            "webhook",
            "coordination",
            "log",
            "secrets",
        },
    )
    d = Config()
    src = r.section(
        raw, "source", {"url", "branch", "poll_interval", "timeout", "allow_rewind", "verify"}
    )
    verify = _verify(r, src) if "verify" in src else None
    url = r.get(src, "url", "str", None, "source.")
    if url is not None:
        from reconciler.source.git import check_url

        try:
            check_url(url)
        except ConfigError as exc:
            r.fail(src, "url", str(exc), "source.")
    source = SourceConfig(
        url=url,
        branch=r.get(src, "branch", "str", None, "source."),
        poll_interval=r.get(src, "poll_interval", "duration", 60.0, "source."),
        timeout=r.get(src, "timeout", "duration", 60.0, "source."),
        allow_rewind=r.get(src, "allow_rewind", "bool", False, "source."),
        verify=verify,
    )
    rec = r.section(raw, "reconcile", {"interval", "splay", "mode", "watch", "max_file_size"})
    reconcile = ReconcileConfig(
        interval=r.get(rec, "interval", "duration", 1800.0, "reconcile."),
        splay=r.get(rec, "splay", "duration", 300.0, "reconcile.", zero_ok=True),
        mode=r.get(rec, "mode", "str", "enforce", "reconcile.", choices=("enforce", "noop")),
        watch=r.get(rec, "watch", "bool", True, "reconcile."),
        max_file_size=r.get(rec, "max_file_size", "size", d.reconcile.max_file_size, "reconcile."),
    )
    web = r.section(raw, "http", {"request_timeout", "max_connections"})
    http = HttpConfig(
        request_timeout=r.get(web, "request_timeout", "duration", 10.0, "http."),
        max_connections=r.get(web, "max_connections", "count", 32, "http."),
    )
    hook = r.section(raw, "webhook", {"secret_file"})
    state_dir = r.get(raw, "state_dir", "path", d.state_dir)
    coord = r.section(
        raw,
        "coordination",
        {
            *("backend", "path", "endpoints", "lease", "exports_ttl", "facts_ttl"),
            *("publish_facts", "username", "password_file", "push", "push_min_interval"),
        },
    )
    coordination = CoordinationConfig(
        backend=r.get(coord, "backend", "str", "local", "coordination.", choices=("local", "etcd")),
        # Beside the node's other state unless set: a configuration with its own state_dir
        # and no coordination section shares nothing with another one.
        path=r.get(coord, "path", "path", state_dir / "coordination", "coordination."),
        endpoints=r.get(coord, "endpoints", "strs", d.coordination.endpoints, "coordination."),
        lease=r.get(coord, "lease", "duration", d.coordination.lease, "coordination."),
        exports_ttl=r.get(
            coord, "exports_ttl", "duration", d.coordination.exports_ttl, "coordination."
        ),
        facts_ttl=r.get(coord, "facts_ttl", "duration", d.coordination.facts_ttl, "coordination."),
        publish_facts=r.get(coord, "publish_facts", "bool", True, "coordination."),
        username=r.get(coord, "username", "str", None, "coordination."),
        password_file=r.get(coord, "password_file", "path", None, "coordination."),
        configured=raw.get("coordination") is not None,
        # On once the daemons share a store: a configuration that names one.
        push=r.get(coord, "push", "bool", raw.get("coordination") is not None, "coordination."),
        push_min_interval=r.get(
            coord,
            "push_min_interval",
            "duration",
            d.coordination.push_min_interval,
            "coordination.",
        ),
    )
    lg = r.section(raw, "log", {"format", "level"})
    log = LogConfig(
        format=r.get(lg, "format", "str", "json", "log.", choices=("json", "console")),
        level=r.get(
            lg, "level", "str", "info", "log.", choices=("debug", "info", "warning", "error")
        ),
    )
    sec = r.section(raw, "secrets", {"eyaml_private_key", "eyaml_public_key", "age_identity"})
    secrets = SecretsConfig(
        eyaml_private_key=r.get(sec, "eyaml_private_key", "path", None, "secrets."),
        eyaml_public_key=r.get(sec, "eyaml_public_key", "path", None, "secrets."),
        age_identity=r.get(sec, "age_identity", "path", None, "secrets."),
    )
    if (secrets.eyaml_private_key is None) != (secrets.eyaml_public_key is None):
        r.fail(
            raw,
            "secrets",
            "eyaml_private_key and eyaml_public_key go together: decrypting needs both",
        )
    listen = r.get(raw, "listen", "str", d.listen)
    if isinstance(listen, str) and not re.match(r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$", listen):
        r.fail(raw, "listen", "must be HOST:PORT like 127.0.0.1:9717")
    config = Config(
        node=r.get(raw, "node", "str", None),
        root=r.get(raw, "root", "path", d.root),
        state_dir=state_dir,
        facts_dirs=r.get(raw, "facts_dirs", "paths", d.facts_dirs),
        source=source,
        reconcile=reconcile,
        listen=listen,
        http=http,
        webhook_secret_file=r.get(hook, "secret_file", "path", None, "webhook."),
        coordination=coordination,
        log=log,
        secrets=secrets,
        path=Path(name),
    )
    if r.problems:
        raise ConfigError("\n".join(str(p) for p in r.problems))
    return config


def _verify(r: _Reader, src: LocMap) -> Verify | None:
    """source.verify: ssh with allowed_signers, or gpg with keyring.

    For gpg, ``allowed_signers`` is also read as the keyring.
    """
    prefix = "source.verify."

    def missing(message: str) -> None:
        r.fail(src, "verify", message, "source.")

    v = src.get("verify")
    if not isinstance(v, LocMap):
        missing("must be a mapping: format, and allowed_signers (ssh) or keyring (gpg)")
        return None
    r.known(v, {"format", "allowed_signers", "keyring"}, prefix)
    fmt = r.get(v, "format", "str", "ssh", prefix, choices=("ssh", "gpg"))
    signers = r.get(v, "allowed_signers", "path", None, prefix)
    keyring = r.get(v, "keyring", "path", None, prefix)
    if v.get("format") not in (None, "ssh", "gpg"):
        return None  # reported
    if fmt == "ssh":
        if keyring is not None:
            r.fail(v, "keyring", "is for format gpg; format ssh takes allowed_signers", prefix)
        elif signers is None:
            if v.get("allowed_signers") is None:  # else its bad value is reported
                missing("format ssh needs allowed_signers (an SSH allowed-signers file)")
        else:
            return Verify("ssh", allowed_signers=signers)
        return None
    if keyring is not None and signers is not None:
        r.fail(v, "allowed_signers", "format gpg takes one keyring: give only keyring", prefix)
    elif keyring is None and signers is None:
        if v.get("keyring") is None and v.get("allowed_signers") is None:
            missing("format gpg needs keyring (a public keyring file or a GnuPG home directory)")
    else:
        return Verify("gpg", keyring=keyring or signers)
    return None


def load_config(path: Path) -> Config:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    return parse_config(data, str(path))
