"""Encrypted values in data: hiera-eyaml's ``ENC[PKCS7,...]`` and age's ``ENC[AGE,...]``.

A value is decrypted on the node, with the node's own keys, only when the node uses it: when
the data layer reads it (``Lookups.decrypt``, made by ``decrypter``), for a parameter, a
``lookup()`` or a ``%{lookup()}``. What a node does not use is never decrypted, so a node that
lacks the key for it is not troubled by it. A decrypted parameter is sensitive, as if it were
listed in the profile's ``sensitive_params``.

The cryptography is the libraries': ``cryptography`` (PKCS#7 enveloped data, as eyaml writes it)
and ``pyrage`` (age). This module only finds the values, reads the keys and explains failures.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import ConfigError, Location, ModelError, Problem
from reconciler.model.repo import Profile, expect_map, read_yaml
from reconciler.source import Snapshot

if TYPE_CHECKING:  # the data layer decrypts through this module: no import cycle at run time
    from reconciler.model.data import Lookups


@dataclass(frozen=True)
class SecretsConfig:
    """``secrets:``: the node's keys for the encrypted values of the control repo."""

    eyaml_private_key: Path | None = None
    eyaml_public_key: Path | None = None
    age_identity: Path | None = None


# A token may hold whitespace and newlines: eyaml's block output (``-o block``) wraps it.
TOKEN = re.compile(r"ENC\[([A-Za-z0-9_]+),([^\]]*)\]")
METHODS = ("PKCS7", "AGE")
AGE_RECIPIENT = re.compile(r"age1[02-9ac-hj-np-z]{58}\Z")


def encrypted(value: Any) -> bool:
    """Whether a value (or anything inside it) holds an ``ENC[...]`` token."""
    if isinstance(value, str):
        return "ENC[" in value
    if isinstance(value, Mapping):
        return any(encrypted(v) for v in value.values())
    if isinstance(value, list):
        return any(encrypted(v) for v in value)
    return False


# -- the node's keys ------------------------------------------------------------------------------


def read_key_file(path: Path, what: str, private: bool = True) -> bytes:
    """A key file of the node's configuration, refused when someone else could have written it
    or (for a private key) could read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        unsafe = 0o077 if private else 0o022
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & unsafe:
            raise ConfigError(
                f"{what} {path}: refusing a key file owned by uid {st.st_uid} with mode "
                f"{st.st_mode & 0o7777:04o}; it must be a regular file of uid {os.geteuid()}, "
                + ("readable by no one else" if private else "writable by no one else")
            )
        return handle.read(1024 * 1024)


class Keyring:
    """The node's keys, read when a value first needs them. ``Keyring(None)`` decrypts nothing:
    values stay as written (validate checks a repo without any node's keys)."""

    def __init__(self, paths: SecretsConfig | None) -> None:
        self.paths = paths
        self.revealed: list[str] = []  # every plaintext decrypted, to be shown as digests only
        self._pkcs7: tuple[Any, Any] | None = None
        self._age: list[Any] | None = None

    @property
    def decrypts(self) -> bool:
        return self.paths is not None

    def pkcs7(self) -> tuple[Any, Any]:
        """(certificate, private key) of the node's eyaml key pair."""
        if self._pkcs7 is None:
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            assert self.paths is not None
            cert_path, key_path = self.paths.eyaml_public_key, self.paths.eyaml_private_key
            if cert_path is None or key_path is None:
                raise _NoKey(
                    "this node has no eyaml key pair (secrets.eyaml_private_key and "
                    "secrets.eyaml_public_key in its configuration)"
                )
            try:
                cert = x509.load_pem_x509_certificate(
                    read_key_file(cert_path, "secrets.eyaml_public_key", private=False)
                )
                key = load_pem_private_key(
                    read_key_file(key_path, "secrets.eyaml_private_key"), None
                )
            except ValueError as exc:
                raise ConfigError(f"the node's eyaml key pair cannot be read: {exc}") from None
            self._pkcs7 = (cert, key)
        return self._pkcs7

    def age(self) -> list[Any]:
        """The node's age identities."""
        if self._age is None:
            import pyrage

            assert self.paths is not None
            path = self.paths.age_identity
            if path is None:
                raise _NoKey(
                    "this node has no age identity (secrets.age_identity in its configuration)"
                )
            text = read_key_file(path, "secrets.age_identity").decode("utf-8", "replace")
            identities = []
            for line in text.splitlines():
                if line.strip().startswith("AGE-SECRET-KEY-"):
                    try:
                        identities.append(pyrage.x25519.Identity.from_str(line.strip()))
                    except pyrage.IdentityError:
                        raise ConfigError(
                            f"secrets.age_identity {path}: a line is not an age identity"
                        ) from None
            if not identities:
                raise ConfigError(f"secrets.age_identity {path}: holds no AGE-SECRET-KEY- line")
            self._age = identities
        return self._age

    def age_recipients(self) -> list[str]:
        """The public recipients (``age1...``) of the node's identities."""
        return [str(identity.to_public()) for identity in self.age()]


class _WrongKey(Exception):
    """The node's key is not one the value was encrypted for."""


class _NoKey(Exception):
    """The node has no key of the kind a value needs."""


# -- decrypting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    """The node that reads a value, for what a decryption failure says: its name, its role and
    the repo whose recipients are listed for them."""

    node: str
    role: str
    snapshot: Snapshot

    def recipients(self) -> list[str]:
        try:
            return load_recipients(self.snapshot).listed_for(self.node, self.role)
        except ModelError:
            return []  # validate reports it


def decrypter(keyring: Keyring, reader: Reader) -> Callable[[str, str, Location], str] | None:
    """How the data layer decrypts for ``reader`` (``Lookups.decrypt``); None for a keyring
    that decrypts nothing."""
    if not keyring.decrypts:
        return None

    def decrypt(method: str, body: str, where: Location) -> str:
        return decrypt_token(keyring, method, body, where, reader)

    return decrypt


def reveal_params(
    keyring: Keyring,
    profile: Profile,
    params: Mapping[str, Any],
    lookups: Lookups,
    reader: Reader,
) -> tuple[dict[str, Any], Profile]:
    """A profile's resolved parameters with their encrypted defaults decrypted, and the profile
    with every parameter that was encrypted sensitive. Values from data were decrypted when
    ``lookups`` read them. Raises a ModelError naming each value it cannot decrypt."""
    revealed = dict(params)
    names: set[str] = set()
    problems: list[Problem] = []
    for key, value in params.items():
        found = lookups.find(f"{profile.name}.{key}")
        if found is not None:
            if found.secret:
                names.add(key)
            continue
        if not encrypted(value):
            continue
        names.add(key)
        where = Location(profile.file, profile.params.line_of(key), f"params.{key}")
        if not keyring.decrypts:
            continue  # stays as written, and sensitive
        try:
            revealed[key] = _reveal(keyring, value, where, reader)
        except ModelError as exc:
            problems += exc.problems
    if problems:
        raise ModelError(problems)
    if not names:
        return revealed, profile
    return revealed, dataclasses.replace(profile, sensitive=profile.sensitive | names)


def _reveal(keyring: Keyring, value: Any, where: Location, reader: Reader) -> Any:
    if isinstance(value, str):
        if "ENC[" in TOKEN.sub("", value):  # a value cut short would be written as it is
            raise ModelError.one(
                "an ENC[ that is not a whole ENC[METHOD,base64] token (cut short?)", where
            )
        whole = TOKEN.fullmatch(value.strip())
        if whole is not None:  # eyaml's block form ends in a newline that is not the secret's
            return decrypt_token(keyring, whole.group(1), whole.group(2), where, reader)
        return TOKEN.sub(
            lambda m: decrypt_token(keyring, m.group(1), m.group(2), where, reader), value
        )
    if isinstance(value, Mapping):
        return {k: _reveal(keyring, v, where, reader) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(keyring, v, where, reader) for v in value]
    return value


def decrypt_token(keyring: Keyring, method: str, body: str, where: Location, reader: Reader) -> str:
    """The plaintext of one ``ENC[method,body]``; a ModelError at ``where`` saying what the node
    would need when it cannot be decrypted."""

    def fail(message: str) -> ModelError:
        return ModelError.one(message, where, "compile")

    if method not in METHODS:
        raise fail(f"ENC[{method},...]: reconciler decrypts ENC[PKCS7,...] and ENC[AGE,...] only")
    try:
        blob = base64.b64decode("".join(body.split()), validate=True)
    except binascii.Error:
        raise fail(f"ENC[{method},...] does not hold base64") from None
    try:
        plain = _decrypt_pkcs7(keyring, blob) if method == "PKCS7" else _decrypt_age(keyring, blob)
    except (_NoKey, _WrongKey) as exc:
        raise fail(
            f"cannot decrypt ENC[{method},...]: {exc}; {_needs(method, blob, reader)}"
        ) from None
    except ConfigError as exc:
        raise fail(f"cannot decrypt ENC[{method},...]: {exc}") from None
    try:
        text = plain.decode("utf-8")
    except UnicodeDecodeError:
        raise fail(f"ENC[{method},...] decrypts to bytes that are not UTF-8 text") from None
    keyring.revealed.append(text)
    return text


def _decrypt_pkcs7(keyring: Keyring, blob: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import pkcs7

    cert, key = keyring.pkcs7()
    try:
        return pkcs7.pkcs7_decrypt_der(blob, cert, key, [])
    except ValueError:
        raise _WrongKey(
            f"this node's eyaml key pair (certificate serial {cert.serial_number}, "
            f"issuer {_name(cert.issuer)}, public key {public_key_id(cert)}) is not the one it "
            "was encrypted for"
        ) from None


def _decrypt_age(keyring: Keyring, blob: bytes) -> bytes:
    import pyrage

    identities = keyring.age()
    try:
        return bytes(pyrage.decrypt(blob, identities))
    except pyrage.DecryptError:
        raise _WrongKey(
            f"this node's age identity (recipient {', '.join(keyring.age_recipients())}) is not "
            "one of those it was encrypted for"
        ) from None


def _needs(method: str, blob: bytes, reader: Reader) -> str:
    """What the value was encrypted for, as far as it says, and how to let the node read it."""
    if method == "PKCS7":
        found = pkcs7_recipients(blob)
        if not found:
            return "it names no recipient certificate that can be read"
        shown = "; ".join(f"serial {serial}, issuer {issuer}" for issuer, serial in found)
        return (
            f"it needs the private key of the certificate with {shown} (every key pair made by "
            "'eyaml createkeys' has serial 1 and an empty issuer: compare the public keys)"
        )
    stanzas = age_stanzas(blob)
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(stanzas.items())) or "no"
    listed = reader.recipients()
    where = f"node {reader.node!r} or role {reader.role!r}"
    hint = (
        f"reconciler.yaml lists {', '.join(listed)} for {where}: to let this node read it, "
        f"encrypt it again with 'reconciler secret encrypt --node {reader.node}' or "
        f"'--role {reader.role}' (with the nodes and roles it was for)"
        if listed
        else f"reconciler.yaml lists no recipient for {where} (recipients.nodes, "
        "recipients.roles): add this node's, then encrypt the value again for it"
    )
    return f"it was encrypted for {kinds} recipient(s), which age does not name; {hint}"


def age_stanzas(blob: bytes) -> dict[str, int]:
    """The types of an age file's recipient stanzas and how many of each (grease left out)."""
    counts: dict[str, int] = {}
    header = blob.split(b"\n---", 1)[0]
    for line in header.split(b"\n"):
        if line.startswith(b"-> "):
            kind = line[3:].split(b" ", 1)[0].decode("ascii", "replace")
            if kind.endswith("-grease"):
                continue
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def public_key_id(cert: Any) -> str:
    """A certificate's public key as ``sha256:`` of its DER SubjectPublicKeyInfo."""
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _name(name: Any) -> str:
    return name.rfc4514_string() or "(empty)"


# -- reading PKCS#7 recipients (issuer and serial of each KeyTransRecipientInfo) ----------------


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``pos``."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, start of element, start of content, end) of each element in ``data[start:end]``."""
    found = []
    while start < end:
        tag, body, stop = _der(data, start)
        found.append((tag, start, body, stop))
        start = stop
    return found


def pkcs7_recipients(blob: bytes) -> list[tuple[str, int]]:
    """(issuer, serial) of each recipient of PKCS#7 enveloped data; [] when it cannot be read."""
    try:
        _, body, end = _der(blob, 0)  # ContentInfo: contentType, [0] EXPLICIT EnvelopedData
        _, _, explicit, _ = _children(blob, body, end)[1]
        _, env, env_end = _der(blob, explicit)
        fields = _children(blob, env, env_end)  # version, [originatorInfo], recipientInfos
        _, _, infos, infos_end = fields[1] if fields[1][0] == 0x31 else fields[2]
        found = []
        for tag, _, info, info_end in _children(blob, infos, infos_end):
            rid_tag, _, rid, rid_end = _children(blob, info, info_end)[1]
            if tag != 0x30 or rid_tag != 0x30:  # not issuerAndSerialNumber, as eyaml writes
                continue
            issuer, serial = _children(blob, rid, rid_end)[:2]
            found.append(
                (
                    _name_from_der(blob[issuer[1] : issuer[3]]),
                    int.from_bytes(blob[serial[2] : serial[3]], "big", signed=True),
                )
            )
        return found
    except (ValueError, IndexError):
        return []


_OID_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
}


def _name_from_der(der: bytes) -> str:
    """An issuer Name (DER) shown as ``CN=...,O=...``: each attribute's value as text."""
    _, body, end = _der(der, 0)
    parts = []
    for _, _, rdn, rdn_end in _children(der, body, end):
        for _, _, atv, atv_end in _children(der, rdn, rdn_end):
            (_, _, o0, o1), (_, _, v0, v1) = _children(der, atv, atv_end)[:2]
            oid = _oid(der[o0:o1])
            parts.append(f"{_OID_NAMES.get(oid, oid)}={der[v0:v1].decode('utf-8', 'replace')}")
    return ",".join(parts) or "(empty)"


def _oid(body: bytes) -> str:
    first = body[0]
    numbers = [first // 40, first % 40]
    value = 0
    for byte in body[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            numbers.append(value)
            value = 0
    return ".".join(map(str, numbers))


# -- recipients in the repo, and encrypting --------------------------------------------------------


@dataclass(frozen=True)
class Recipients:
    """``recipients:`` in reconciler.yaml: the age recipients of each node and each role."""

    nodes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def listed_for(self, node: str, role: str) -> list[str]:
        return [*self.nodes.get(node, ()), *self.roles.get(role, ())]


def load_recipients(snapshot: Snapshot) -> Recipients:
    """reconciler.yaml's ``recipients:``; a ModelError naming the line of each bad entry."""
    path = "reconciler.yaml"
    if not snapshot.exists(path):
        return Recipients()
    raw = expect_map(read_yaml(snapshot, path), Location(path), "reconciler.yaml")
    if "recipients" not in raw:
        return Recipients()
    section = expect_map(
        raw["recipients"], Location(path, raw.line_of("recipients"), "recipients"), "recipients"
    )
    problems: list[Problem] = []
    found: dict[str, dict[str, tuple[str, ...]]] = {"nodes": {}, "roles": {}}
    for kind, names in section.items():
        where = Location(path, section.line_of(kind), f"recipients.{kind}")
        if kind not in found:
            problems.append(Problem("unknown key: recipients has nodes and roles", where))
            continue
        try:
            names = expect_map(names, where, f"recipients.{kind}")
        except ModelError as exc:
            problems += exc.problems
            continue
        for name, keys in names.items():
            at = Location(path, names.line_of(name), f"recipients.{kind}.{name}")
            listed = keys if isinstance(keys, list) else [keys]
            bad = [k for k in listed if not isinstance(k, str) or not AGE_RECIPIENT.match(k)]
            if bad:
                problems.append(Problem(f"not an age recipient (age1...): {bad[0]!r}", at))
                continue
            found[kind][str(name)] = tuple(listed)
    if problems:
        raise ModelError(problems, "validate")
    return Recipients(found["nodes"], found["roles"])


def recipients_for(recipients: Recipients, nodes: list[str], roles: list[str]) -> list[str]:
    """The union of the age recipients of the named nodes and roles; a ModelError for a name
    reconciler.yaml does not list."""
    from reconciler.model.repo import did_you_mean

    chosen: list[str] = []
    problems = []
    for kind, names, listed in (
        ("node", nodes, recipients.nodes),
        ("role", roles, recipients.roles),
    ):
        for name in names:
            if name not in listed:
                problems.append(
                    Problem(
                        f"no age recipients for {kind} {name!r} (recipients.{kind}s)"
                        f"{did_you_mean(name, listed)}",
                        Location("reconciler.yaml", key=f"recipients.{kind}s"),
                    )
                )
                continue
            chosen += [key for key in listed[name] if key not in chosen]
    if problems:
        raise ModelError(problems, "validate")
    return chosen


def encrypt_age(plaintext: bytes, recipients: list[str]) -> str:
    """``ENC[AGE,...]`` of ``plaintext`` for every recipient."""
    import pyrage

    keys = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
    return "ENC[AGE," + base64.b64encode(pyrage.encrypt(plaintext, keys)).decode("ascii") + "]"


def encrypt_pkcs7(plaintext: bytes, certificate_pem: bytes) -> str:
    """``ENC[PKCS7,...]`` of ``plaintext`` for an eyaml public key, as ``eyaml encrypt`` writes
    it (PKCS#7 enveloped data, AES-256-CBC), so that eyaml decrypts it too."""
    from cryptography import x509
    from cryptography.hazmat.primitives.ciphers import algorithms
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

    cert = x509.load_pem_x509_certificate(certificate_pem)
    der = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(plaintext)
        .set_content_encryption_algorithm(algorithms.AES256)
        .add_recipient(cert)
        .encrypt(Encoding.DER, [])
    )
    return "ENC[PKCS7," + base64.b64encode(der).decode("ascii") + "]"
