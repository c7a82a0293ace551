"""Facts: what the node is, as templates and classification see it.

Built-in facts are read from /proc, /sys and /etc without running anything, so gathering them
costs a few milliseconds. External facts come from facts directories (YAML, JSON, and
executables printing a JSON mapping, run with a timeout and bounded output); a broken one is a
warning, as in Facter, and gathering goes on. ``--facts FILE`` comes last; a broken one is an
error. Later sources are deep-merged over earlier ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler import process
from reconciler.errors import Location, ModelError

MAX_FACT_BYTES = 1024 * 1024
# The facts the agent computes itself, kept apart as ``facts.trusted``: a facts directory or
# file (which a local user may be able to write) can change the others, never these.
TRUSTED = ("node", "hostname", "fqdn", "domain", "os", "kernel", "architecture")
_FAMILIES = {
    "debian": "Debian",
    "ubuntu": "Debian",
    "rhel": "RedHat",
    "fedora": "RedHat",
    "centos": "RedHat",
    "rocky": "RedHat",
    "almalinux": "RedHat",
    "ol": "RedHat",
    "amzn": "RedHat",
    "sles": "Suse",
    "suse": "Suse",
    "opensuse": "Suse",
    "opensuse-leap": "Suse",
    "arch": "Archlinux",
    "manjaro": "Archlinux",
    "alpine": "Alpine",
    "gentoo": "Gentoo",
}


@dataclass
class FactSet:
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into ``base``: mappings merge key by key, anything else replaces."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = _plain(value)
    return base


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def lookup(facts: Mapping[str, Any], dotted: str) -> Any:
    """The fact at a dotted path such as ``os.family``; KeyError when absent."""
    value: Any = facts
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


# Facts that change from one run to the next while nothing about the node changes. A compile
# that did not read them is not redone for them alone (the daemon's compiled-catalog cache).
VOLATILE = ("uptime_seconds", "memory.available_bytes")


class ReadFacts(dict[str, Any]):
    """Facts that note which of them were read: a value read by its name notes its dotted path
    (``os.family``); a mapping read whole (iterated, copied, compared, dumped, printed) notes
    its path with ``*`` (``memory.*``; ``*`` for all the facts). Nested mappings are
    ``ReadFacts`` too, sharing one record; ``was_read`` asks it. Its own attributes have
    mangled names, so that templates still reach every fact as ``facts.NAME``."""

    __slots__ = ("__path", "__seen")

    def __init__(self, facts: Mapping[str, Any], path: str = "", seen: set[str] | None = None):
        super().__init__()
        self.__path = path
        self.__seen: set[str] = set() if seen is None else seen
        for key, value in facts.items():
            if isinstance(value, Mapping):
                value = ReadFacts(value, f"{path}{key}.", self.__seen)
            dict.__setitem__(self, key, value)

    def _read(self, key: object) -> None:
        self.__seen.add(f"{self.__path}{key}")

    def _whole(self) -> None:
        self.__seen.add(f"{self.__path}*")

    def _record(self) -> set[str]:
        return self.__seen

    def __getitem__(self, key: str) -> Any:
        self._read(key)
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        self._read(key)
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        self._read(key)
        return dict.__contains__(self, key)

    def __iter__(self) -> Iterator[str]:
        self._whole()
        return dict.__iter__(self)

    def keys(self) -> Any:
        self._whole()
        return dict.keys(self)

    def values(self) -> Any:
        self._whole()
        return dict.values(self)

    def items(self) -> Any:
        self._whole()
        return dict.items(self)

    def copy(self) -> dict[str, Any]:
        self._whole()
        return dict(dict.items(self))

    def __eq__(self, other: object) -> bool:
        self._whole()
        return dict.__eq__(self, other)

    __hash__ = None

    def __repr__(self) -> str:
        self._whole()
        return dict.__repr__(self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        self._whole()
        return dict, (dict(dict.items(self)),)


def was_read(facts: ReadFacts, dotted: Sequence[str]) -> bool:
    """Whether any fact at the ``dotted`` paths was read, by its name or with a mapping
    holding it read whole."""
    seen = set(facts._record())  # a copy: a resource may read facts in another thread
    for path in dotted:
        parts = path.split(".")
        wholes = {".".join([*parts[:i], "*"]) for i in range(len(parts))}
        if path in seen or wholes & seen:
            return True
    return False


def stable_view(facts: Mapping[str, Any]) -> dict[str, Any]:
    """``facts`` without the ``VOLATILE`` ones (a copy; nested mappings copied as needed)."""
    view = dict(facts)
    for dotted in VOLATILE:
        *parents, last = dotted.split(".")
        holder: Any = view
        for part in parents:
            inner = holder.get(part) if isinstance(holder, dict) else None
            if not isinstance(inner, Mapping):
                holder = None
                break
            holder[part] = dict(inner)
            holder = holder[part]
        if isinstance(holder, dict):
            holder.pop(last, None)
    return view


# -- built-in facts ---------------------------------------------------------------------------


def parse_os_release(text: str) -> dict[str, Any]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            fields[key.strip()] = value.strip().strip('"').strip("'")
    os_id = fields.get("ID", "linux").lower()
    family = _FAMILIES.get(os_id)
    if family is None:
        for like in fields.get("ID_LIKE", "").lower().split():
            if like in _FAMILIES:
                family = _FAMILIES[like]
                break
    full = fields.get("VERSION_ID", "")
    name = fields.get("NAME", os_id).split(" GNU/Linux")[0].split(" Linux")[0]
    return {
        "family": family or "Linux",
        "name": name,
        "id": os_id,
        "release": {"full": full, "major": full.split(".")[0] if full else ""},
        "codename": fields.get("VERSION_CODENAME") or None,
    }


def parse_meminfo(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return {
        "total_bytes": values.get("MemTotal", 0),
        "available_bytes": values.get("MemAvailable", values.get("MemFree", 0)),
    }


def _interfaces(sys_net: Path) -> dict[str, Any]:
    """Interfaces with MAC and addresses, without running a program."""
    interfaces: dict[str, Any] = {}
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    for name in names:
        mac = None
        with contextlib.suppress(OSError):
            mac = (sys_net / name / "address").read_text().strip() or None
        interfaces[name] = {"mac": mac, "addresses": []}
    try:
        import fcntl
        import struct

        # IPv4 addresses through SIOCGIFADDR/SIOCGIFNETMASK: one ioctl each, no subprocess.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for name in interfaces:
                packed = struct.pack("256s", name.encode()[:15])
                try:
                    addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, packed)[20:24])
                    mask = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x891B, packed)[20:24])
                except OSError:
                    continue
                prefix = sum(bin(int(octet)).count("1") for octet in mask.split("."))
                interfaces[name]["addresses"].append(f"{addr}/{prefix}")
    except OSError:
        pass
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[5] in interfaces:
                raw = parts[0]
                addr = ":".join(raw[i : i + 4] for i in range(0, 32, 4))
                compact = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, addr))
                interfaces[parts[5]]["addresses"].append(f"{compact}/{int(parts[2], 16)}")
    except OSError:
        pass
    return interfaces


def _virtual(proc: Path) -> str:
    if Path("/.dockerenv").exists():
        return "docker"
    if Path("/run/.containerenv").exists():
        return "podman"
    try:
        cgroup = (proc / "1/cgroup").read_text()
        for name in ("docker", "lxc", "kubepods"):
            if name in cgroup:
                return "docker" if name == "kubepods" else name
    except OSError:
        pass
    try:
        if "microsoft" in (proc / "sys/kernel/osrelease").read_text().lower():
            return "wsl"
    except OSError:
        pass
    dmi = Path("/sys/class/dmi/id")
    text = ""
    for name in ("product_name", "sys_vendor", "board_vendor"):
        try:
            text += (dmi / name).read_text().lower()
        except OSError:
            continue
    for needle, kind in (
        ("kvm", "kvm"),
        ("qemu", "kvm"),
        ("vmware", "vmware"),
        ("virtualbox", "virtualbox"),
        ("xen", "xen"),
        ("microsoft corporation", "hyperv"),
        ("amazon ec2", "kvm"),
        ("google", "gce"),
    ):
        if needle in text:
            return kind
    try:
        if " hypervisor" in (proc / "cpuinfo").read_text():
            return "virtual"
    except OSError:
        pass
    return "physical"


def builtin(node: str | None, proc: Path, etc: Path) -> FactSet:
    found = FactSet()
    facts = found.facts

    def attempt(name: str, fn: Any) -> None:
        try:
            facts[name] = fn()
        except Exception as exc:  # one broken fact must not stop the others
            found.warnings.append(f"fact {name!r}: {type(exc).__name__}: {exc}")
            facts[name] = None

    hostname = socket.gethostname()
    fqdn = socket.getfqdn(hostname) if "." not in hostname else hostname
    if "." not in fqdn:
        fqdn = hostname
    domain = fqdn.split(".", 1)[1] if "." in fqdn else ""
    facts.update(node=node or fqdn, hostname=hostname.split(".")[0], fqdn=fqdn, domain=domain)

    def read_os() -> dict[str, Any]:
        for candidate in (etc / "os-release", Path("/usr/lib/os-release")):
            try:
                return parse_os_release(candidate.read_text())
            except OSError:
                continue
        return parse_os_release("")

    attempt("os", read_os)
    uname = platform.uname()
    facts["kernel"] = {"name": uname.system, "release": uname.release, "version": uname.version}
    facts["architecture"] = uname.machine
    facts["processors"] = {"count": os.cpu_count() or 1}
    attempt("memory", lambda: parse_meminfo((proc / "meminfo").read_text()))
    attempt(
        "networking",
        lambda: _networking(hostname, fqdn, domain),
    )
    attempt("virtual", lambda: _virtual(proc))
    facts["is_virtual"] = facts.get("virtual") not in (None, "physical")
    facts["python"] = {"version": platform.python_version()}
    attempt("uptime_seconds", lambda: int(float((proc / "uptime").read_text().split()[0])))
    return found


def _networking(hostname: str, fqdn: str, domain: str) -> dict[str, Any]:
    interfaces = _interfaces(Path("/sys/class/net"))
    primary = None
    for name, info in interfaces.items():
        if name == "lo":
            continue
        for address in info["addresses"]:
            if "." in address:
                primary = address.split("/")[0]
                break
        if primary:
            break
    return {
        "hostname": hostname.split(".")[0],
        "fqdn": fqdn,
        "domain": domain,
        "interfaces": interfaces,
        "ip": primary,
    }


# -- external facts -----------------------------------------------------------------------------


def _run_executable(path: Path, timeout: float) -> tuple[dict[str, Any] | None, str | None]:
    """Run a facts executable: its output read up to MAX_FACT_BYTES, for at most ``timeout``
    seconds. Past either bound it is killed with its whole process group, and never read
    further, even if something it started holds its output open."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
    }
    try:
        done = process.run(
            [str(path)],
            timeout=timeout,
            env=env,
            output_cap=MAX_FACT_BYTES,
            keep="head",
            stderr="discard",
            kill_on_overflow=True,
            grace=0.0,
        )
    except OSError as exc:
        return None, f"cannot run: {exc.strerror or exc}"
    if done.timed_out:
        return None, f"timed out after {timeout:g}s; killed with its process group"
    if done.overflowed:
        return None, f"printed more than {MAX_FACT_BYTES} bytes; killed with its process group"
    out = done.stdout
    if done.returncode != 0:
        return None, f"exited {done.returncode}"
    try:
        data = json.loads(out)
    except ValueError as exc:
        return None, f"did not print JSON: {exc}"
    if not isinstance(data, dict):
        return None, "did not print a JSON mapping"
    return data, None


def _read_fact_file(path: Path, timeout: float) -> tuple[dict[str, Any] | None, str | None]:
    try:
        st = path.stat()
    except OSError as exc:
        return None, exc.strerror or str(exc)
    if not path.is_file():
        return None, None
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        if os.access(path, os.X_OK):
            return _run_executable(path, timeout)
        return None, None  # other files (README, *.disabled) are not facts
    if st.st_size > MAX_FACT_BYTES:
        return None, f"larger than {MAX_FACT_BYTES} bytes"
    from reconciler.model.yamlload import load

    # The repo's bounded loader (JSON is YAML): an alias bomb or thousands of nested brackets
    # are refused in milliseconds, and the other facts still load.
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FACT_BYTES + 1)  # it may have grown since the stat
        if len(raw) > MAX_FACT_BYTES:
            return None, f"larger than {MAX_FACT_BYTES} bytes"
        data = load(raw, str(path))
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    except ModelError as exc:
        problem = exc.problems[0]
        line = f"line {problem.where.line}: " if problem.where.line else ""
        return None, f"{line}{problem.message}".replace("\n", " ")
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        return None, "must hold a mapping"
    return dict(_plain(data)), None


def load_facts_file(path: Path) -> dict[str, Any]:
    """``--facts FILE``: a YAML or JSON mapping; anything wrong is an error naming the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError.one(f"cannot read facts: {exc.strerror}", Location(str(path))) from None
    return parse_facts(data, str(path))


def parse_facts(data: bytes, name: str) -> dict[str, Any]:
    """Facts in YAML or JSON (a mapping), read with the repo's bounded loader; anything wrong
    is an error naming ``name`` and the line."""
    from reconciler.model.yamlload import load

    value = load(data, name)  # JSON is YAML; errors carry the line
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ModelError.one("facts must be a mapping", Location(name, 1))
    return dict(_plain(value))


def gather(
    node: str | None = None,
    facts_dirs: Sequence[Path] = (),
    facts_file: Path | None = None,
    timeout: float = 10.0,
    proc: Path = Path("/proc"),
    etc: Path = Path("/etc"),
) -> FactSet:
    """Every fact of this node: built-in, then facts directories, then ``facts_file``."""
    found = builtin(node, proc, etc)
    name = found.facts["node"]
    trusted = {key: _plain(found.facts.get(key)) for key in TRUSTED}
    for directory in facts_dirs:
        try:
            entries = sorted(Path(directory).iterdir())
        except OSError:
            continue
        for path in entries:
            data, problem = _read_fact_file(path, timeout)
            if problem:
                found.warnings.append(f"facts {path}: {problem}; skipped")
            elif data:
                deep_merge(found.facts, data)
    if facts_file is not None:
        deep_merge(found.facts, load_facts_file(facts_file))
    # The node name comes from --node or the host, never from a fact source (a fact must not
    # be able to move a node into another role).
    found.facts["node"] = name
    found.facts["trusted"] = trusted
    return found


def render(facts: Mapping[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(facts, indent=2, sort_keys=True) + "\n"
    return str(yaml.safe_dump(_plain(facts), default_flow_style=False, sort_keys=True))
