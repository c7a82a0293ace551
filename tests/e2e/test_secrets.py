"""Encrypted values in data, decrypted on the node that uses them and nowhere else.

The values are encrypted by the real tools (`eyaml` from Debian's hiera-eyaml, `age` from
Debian's age), the nodes run the real CLI with their keys in their configuration file, and
`reconciler secret encrypt`'s output is decrypted by the real tools.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.resources.base import digest
from tests.conftest import CLI, wait_for, write_tree
from tests.daemon.conftest import Daemon, GitServer

DB_PASSWORD = "db-pass-7Qx91kLm"  # for role db, with age
API_TOKEN = "api-token-Vb83Hs2q"  # for the eyaml key pair, written in eyaml's block form
REPLICA_PASSWORD = "replica-Kp20xW"  # in a profile's default
DSN_PASSWORD = "dsn-pass-Ty61"  # a token inside a longer string
NEEDS = {"eyaml": "hiera-eyaml", "age": "age", "age-keygen": "age"}


def tool(name: str) -> str:
    """A real tool the tests need: missing, it is a failure naming its Debian package."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install {NEEDS[name]}")
    return path


def run(*argv: str, input: bytes | None = None, cwd: Path | None = None) -> bytes:
    done = subprocess.run(argv, input=input, cwd=cwd, capture_output=True, timeout=60)
    assert done.returncode == 0, (argv, done.stderr)
    return done.stdout


def age_identity(path: Path) -> str:
    """A new age identity in ``path`` (by age-keygen); its recipient."""
    run(tool("age-keygen"), "-o", str(path))
    return next(
        line.split(": ", 1)[1]
        for line in path.read_text().splitlines()
        if line.startswith("# public key: ")
    )


def age_encrypt(value: str, recipient: str) -> str:
    """``ENC[AGE,...]`` as written by the age tool itself."""
    blob = run(tool("age"), "-r", recipient, input=value.encode())
    return "ENC[AGE," + base64.b64encode(blob).decode() + "]"


def eyaml_keys(where: Path) -> tuple[Path, Path]:
    """(private, public) eyaml key pair made by ``eyaml createkeys`` in ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    run(tool("eyaml"), "createkeys", cwd=where)
    return where / "keys/private_key.pkcs7.pem", where / "keys/public_key.pkcs7.pem"


def eyaml_encrypt(value: str, private: Path, public: Path, output: str) -> str:
    argv = [tool("eyaml"), "encrypt", "-s", value, "-o", output]
    argv += ["--pkcs7-private-key", str(private), "--pkcs7-public-key", str(public)]
    return run(*argv).decode().strip()


class Site:
    """A control repo with a database password for role db and an eyaml API token, and the keys
    of a db node and a web node."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db_recipient = age_identity(tmp / "db.agekey")
        self.web_recipient = age_identity(tmp / "web.agekey")
        self.eyaml_private, self.eyaml_public = eyaml_keys(tmp / "eyaml")
        block = eyaml_encrypt(API_TOKEN, self.eyaml_private, self.eyaml_public, "block")
        assert "\n" in block  # eyaml's block form: wrapped lines
        self.files: dict[str, str] = {
            "reconciler.yaml": f"""
                    recipients:
                      roles:
                        db: [{self.db_recipient}]
                        web: [{self.web_recipient}]
                    """,
            "nodes.yaml": """
                    nodes:
                      - match: "db-*"
                        role: db
                      - match: "web-*"
                        role: web
                    """,
            "roles/db.yaml": "profiles: [db]\n",
            "roles/web.yaml": "profiles: [web]\n",
            "profiles/db.yaml": """
                    params:
                      password: ""
                      api_token: ""
                      # encrypted in the default, and a token among other text
                      replica: @REPLICA@
                      dsn: "postgres://app:@DSN@@db/app"
                    resources:
                      - directory: /etc/db
                      - file: /etc/db/password
                        content: "{{ params.password }}\\n"
                        mode: "0600"
                      - file: /etc/db/api.conf
                        content: "url = https://api.example.com\\ntoken = {{ params.api_token }}\\n"
                      - file: /etc/db/replica.conf
                        content: "{{ params.replica }} {{ params.dsn }}\\n"
                    """.replace(
                "@REPLICA@", age_encrypt(REPLICA_PASSWORD, self.db_recipient)
            ).replace("@DSN@", age_encrypt(DSN_PASSWORD, self.db_recipient)),
            "profiles/web.yaml": """
                    params:
                      greeting: hello
                    resources:
                      - file: /etc/motd
                        content: "{{ params.greeting }}\\n"
                    """,
            "data/common.yaml": "db:\n"
            f"  password: {age_encrypt(DB_PASSWORD, self.db_recipient)}\n"
            "  api_token: >\n" + "".join(f"    {line}\n" for line in block.splitlines()),
        }
        self.repo = write_tree(tmp / "repo", self.files)

    def config(self, node: str, **keys: Path) -> Path:
        """A node's configuration file, naming its keys."""
        path = self.tmp / f"{node}.yaml"
        lines = [f"node: {node}", "secrets:"] + [f"  {k}: {v}" for k, v in keys.items()]
        path.write_text("\n".join(lines) + "\n" if keys else f"node: {node}\n")
        return path

    def db_config(self) -> Path:
        return self.config(
            "db-1",
            age_identity=self.tmp / "db.agekey",
            eyaml_private_key=self.eyaml_private,
            eyaml_public_key=self.eyaml_public,
        )

    def web_config(self) -> Path:
        return self.config("web-1", age_identity=self.tmp / "web.agekey")


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def files_under(path: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_the_db_node_decrypts_values_written_by_eyaml_and_age(site: Site, cli: CLI) -> None:
    config = site.db_config()
    plan = cli.run("plan", site.repo, "--config", str(config), "--format", "json", check=2)
    done = cli.run("apply", site.repo, "--config", str(config), check=2)
    status = cli("status", "--state-dir", str(cli.state), "--format", "json", check=0)

    assert (cli.root / "etc/db/password").read_text() == DB_PASSWORD + "\n"
    api = (cli.root / "etc/db/api.conf").read_text()
    assert api == f"url = https://api.example.com\ntoken = {API_TOKEN}\n"  # no block newline
    assert (cli.root / "etc/db/replica.conf").read_text() == (
        f"{REPLICA_PASSWORD} postgres://app:{DSN_PASSWORD}@db/app\n"
    )
    # The files that use a decrypted value are sensitive: shown as digests, never as text.
    report = json.loads(plan.stdout)
    shown = {r["id"]: r for r in report["resources"]}
    assert digest(DB_PASSWORD + "\n") in json.dumps(shown["file:/etc/db/password"])
    assert digest(api) in json.dumps(shown["file:/etc/db/api.conf"])
    outputs = [plan.stdout, plan.stderr, done.stdout, done.stderr, status.stdout]
    stored = files_under(cli.state)
    assert stored  # the run report and the inventory, at least
    for secret in (DB_PASSWORD, API_TOKEN, REPLICA_PASSWORD, DSN_PASSWORD):
        assert not any(secret in text for text in outputs), secret
        assert not [p for p, data in stored.items() if secret.encode() in data], secret


def test_a_web_node_without_the_db_keys_compiles_what_it_uses(site: Site, cli: CLI) -> None:
    # It has neither the db role's age identity nor the eyaml key pair, and needs neither.
    done = cli.run("apply", site.repo, "--config", str(site.web_config()), check=2)

    assert (cli.root / "etc/motd").read_text() == "hello\n"
    assert not (cli.root / "etc/db").exists()
    assert "cannot decrypt" not in done.stderr


def test_a_node_that_uses_a_value_it_cannot_decrypt_fails_where_it_is_used(
    site: Site, cli: CLI
) -> None:
    # A mistake: the web role now includes the db profile.
    (site.repo / "roles/web.yaml").write_text("profiles: [web, db]\n")

    done = cli.run("apply", site.repo, "--config", str(site.web_config()), check=1)

    errors = done.stderr
    # Each value: its file, line and key, and what the node would need.
    assert "data/common.yaml:2, key 'db.password': cannot decrypt ENC[AGE,...]" in errors
    assert f"this node's age identity (recipient {site.web_recipient}) is not one of" in errors
    assert "it was encrypted for 1 X25519 recipient(s), which age does not name" in errors
    assert f"reconciler.yaml lists {site.web_recipient} for node 'web-1' or role 'web'" in errors
    assert "'reconciler secret encrypt --node web-1' or '--role web'" in errors
    assert "data/common.yaml:3, key 'db.api_token': cannot decrypt ENC[PKCS7,...]" in errors
    assert "this node has no eyaml key pair (secrets.eyaml_private_key" in errors
    assert "the certificate with serial 1, issuer (empty)" in errors
    # Nothing of the revision is applied, and nothing is revealed.
    assert not (cli.root / "etc/motd").exists()
    assert DB_PASSWORD not in done.stdout + errors


def test_another_eyaml_key_pair_is_named_in_the_error(site: Site, cli: CLI) -> None:
    private, public = eyaml_keys(site.tmp / "other-eyaml")
    config = site.config(
        "db-1",
        age_identity=site.tmp / "db.agekey",
        eyaml_private_key=private,
        eyaml_public_key=public,
    )

    done = cli.run("plan", site.repo, "--config", str(config), check=1)

    assert "data/common.yaml:3, key 'db.api_token': cannot decrypt ENC[PKCS7,...]" in done.stderr
    assert "this node's eyaml key pair (certificate serial 1, issuer (empty), public key " in (
        done.stderr
    )
    assert "db.password" not in done.stderr  # the age value it can read is fine


def test_a_key_file_others_can_read_is_refused(site: Site, cli: CLI) -> None:
    identity = site.tmp / "db.agekey"
    identity.chmod(0o644)

    done = cli.run("plan", site.repo, "--config", str(site.db_config()), check=1)

    assert f"secrets.age_identity {identity}: refusing a key file" in done.stderr
    assert "mode 0644" in done.stderr
    assert DB_PASSWORD not in done.stdout + done.stderr


def test_validate_needs_no_keys(site: Site, cli: CLI) -> None:
    done = cli("validate", "--repo", str(site.repo), check=0)
    assert "valid" in done.stdout


def test_secret_encrypt_for_a_role_reads_the_recipients_from_the_repo(site: Site, cli: CLI) -> None:
    done = cli("secret", "encrypt", "--repo", str(site.repo), "--role", "db", input="s3cret-x\n")
    assert done.returncode == 0, done.stderr
    value = done.stdout.strip()
    assert value.startswith("ENC[AGE,") and value.endswith("]")
    blob = base64.b64decode(value[len("ENC[AGE,") : -1])

    # The real age tool: the db identity reads it (the final newline of stdin is not part of
    # it), the web identity cannot.
    assert run(tool("age"), "-d", "-i", str(site.tmp / "db.agekey"), input=blob) == b"s3cret-x"
    refused = subprocess.run(
        [tool("age"), "-d", "-i", str(site.tmp / "web.agekey")], input=blob, capture_output=True
    )
    assert refused.returncode != 0

    # Both roles: either reads it.
    both = cli(
        "secret", "encrypt", "--repo", str(site.repo), "--role", "db", "--role", "web",
        "--value", "shared-value",
    )  # fmt: skip
    blob = base64.b64decode(both.stdout.strip()[len("ENC[AGE,") : -1])
    for key in ("db.agekey", "web.agekey"):
        assert run(tool("age"), "-d", "-i", str(site.tmp / key), input=blob) == b"shared-value"

    unknown = cli("secret", "encrypt", "--repo", str(site.repo), "--role", "dbs", "--value", "x")
    assert unknown.returncode == 1
    assert "no age recipients for role 'dbs' (recipients.roles) (did you mean 'db'?)" in (
        unknown.stderr
    )


def test_secret_encrypt_eyaml_is_read_by_eyaml(site: Site, cli: CLI) -> None:
    done = cli(
        "secret", "encrypt", "--eyaml", "--public-key", str(site.eyaml_public),
        "--value", "for-puppet-too",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    value = done.stdout.strip()
    assert value.startswith("ENC[PKCS7,")
    argv = [tool("eyaml"), "decrypt", "-s", value]
    argv += ["--pkcs7-private-key", str(site.eyaml_private)]
    argv += ["--pkcs7-public-key", str(site.eyaml_public)]
    assert run(*argv).decode().strip() == "for-puppet-too"


def test_a_node_reads_what_secret_encrypt_wrote_for_it(site: Site, cli: CLI) -> None:
    # The node's own recipient, under recipients.nodes.
    text = (site.repo / "reconciler.yaml").read_text()
    (site.repo / "reconciler.yaml").write_text(
        text + f"  nodes:\n    web-1: [{site.web_recipient}]\n"
    )
    encrypted = cli(
        "secret", "encrypt", "--repo", str(site.repo), "--node", "web-1", "--value", "motd-9f3k2x"
    )
    assert encrypted.returncode == 0, encrypted.stderr
    (site.repo / "data/nodes").mkdir(parents=True)
    (site.repo / "data/nodes/web-1.yaml").write_text(
        f"web:\n  greeting: {encrypted.stdout.strip()}\n"
    )

    done = cli.run("apply", site.repo, "--config", str(site.web_config()), check=2)

    assert (cli.root / "etc/motd").read_text() == "motd-9f3k2x\n"
    assert "motd-9f3k2x" not in done.stdout + done.stderr


def test_validate_names_a_bad_recipient(site: Site, cli: CLI) -> None:
    text = (site.repo / "reconciler.yaml").read_text()
    (site.repo / "reconciler.yaml").write_text(text + "  nodes:\n    web-1: [age1nope]\n")

    done = cli("validate", "--repo", str(site.repo), check=1)

    assert (
        "reconciler.yaml:6, key 'recipients.nodes.web-1': not an age recipient (age1...): "
        "'age1nope'" in done.stderr
    )


def test_the_daemon_decrypts_with_the_keys_in_its_configuration(site: Site) -> None:
    (site.tmp / "server").mkdir()
    server = GitServer(site.tmp / "server")
    server.start()
    (site.tmp / "agent").mkdir()
    daemon = Daemon(site.tmp / "agent", server.url, poll_interval="1s", interval="1h")
    daemon.write_config(
        f"secrets:\n  age_identity: {site.tmp / 'db.agekey'}\n"
        f"  eyaml_private_key: {site.eyaml_private}\n  eyaml_public_key: {site.eyaml_public}\n"
    )
    nodes = "nodes:\n  - match: node-1\n    role: db\n"
    try:
        server.push({**site.files, "nodes.yaml": nodes}, "encrypted values")
        daemon.start()
        password = daemon.root / "etc/db/password"
        wait_for(password.exists, what="first apply")
        assert password.read_text() == DB_PASSWORD + "\n"
        assert f"token = {API_TOKEN}\n" in (daemon.root / "etc/db/api.conf").read_text()
        # A revision whose role uses a value encrypted for web only is rejected, and says why.
        web_only = age_encrypt("web-only-Zr72", site.web_recipient)
        bad = server.push(
            {
                "roles/db.yaml": "profiles: [db, web]\n",
                "data/roles/db.yaml": f"web:\n  greeting: {web_only}\n",
            },
            "a value for web",
        )
        wait_for(
            lambda: bad in json.loads(daemon.get("/status")[1]).get("rejected", {}),
            what="the rejection",
        )
        status = daemon.get("/status")[1].decode()
        assert "data/roles/db.yaml:2, key 'web.greeting': cannot decrypt ENC[AGE,...]" in status
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()
        server.stop()
    # source/ is the daemon's mirror of the control repo: it holds the values encrypted.
    stored = {p: data for p, data in files_under(daemon.state).items() if "source" not in p.parts}
    for secret in (DB_PASSWORD, API_TOKEN):
        assert secret not in daemon.logs() + status
        assert not [p for p, data in stored.items() if secret.encode() in data], secret


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ENC[AGE,YWdlLWVuY3J5cHRpb24", "an ENC[ that is not a whole ENC[METHOD,base64] token"),
        ("ENC[AGE,not base64!]", "ENC[AGE,...] does not hold base64"),
        ("ENC[GPG,YWJj]", "ENC[GPG,...]: reconciler decrypts ENC[PKCS7,...] and ENC[AGE,...] only"),
    ],
)
def test_a_broken_encrypted_value_is_an_error_not_text(
    site: Site, cli: CLI, value: str, message: str
) -> None:
    (site.repo / "data/nodes").mkdir(parents=True)
    (site.repo / "data/nodes/web-1.yaml").write_text(f"web:\n  greeting: {value}\n")

    done = cli.run("plan", site.repo, "--config", str(site.web_config()), check=1)

    assert f"data/nodes/web-1.yaml:2, key 'web.greeting': {message}" in done.stderr


def test_a_token_decrypted_inside_a_longer_value_is_shown_as_its_digest(
    site: Site, cli: CLI
) -> None:
    # An exec that names no parameter prints the password of the dsn alone, and fails.
    (site.repo / "roles/db.yaml").write_text("profiles: [db, leak]\n")
    (site.repo / "profiles/leak.yaml").write_text(
        "resources:\n"
        "  - exec: show-dsn-password\n"
        "    command: sed 's/.*app://; s/@.*//' \"$RECONCILER_ROOT/etc/db/replica.conf\"; exit 3\n"
        "    require: file:/etc/db/replica.conf\n"
    )

    done = cli.run("apply", site.repo, "--config", str(site.db_config()), check=6)

    assert digest(DSN_PASSWORD) in done.stdout
    assert DSN_PASSWORD not in done.stdout + done.stderr


# -- values read through lookup(), %{lookup()}, app parameters and explain ----------------------

BACKUP_PASSWORD = "backup-pass-Hq27Lx"  # a free key, for role db, with age
VAULT_TOKEN = "vault-token-Pm48Rw"  # an app's parameter in data, for role db, with age


def with_free_key(site: Site) -> int:
    """A free key encrypted by age for role db, read by lookup() in a value and in a template
    file, and by %{lookup()} in a profile parameter and in another free key; its line."""
    common = site.repo / "data/common.yaml"
    line = len(common.read_text().splitlines()) + 1
    common.write_text(
        common.read_text()
        + f"backup_password: {age_encrypt(BACKUP_PASSWORD, site.db_recipient)}\n"
        + "backup_url: \"s3://backup:%{lookup('backup_password')}@store\"\n"
        + "backup:\n  dsn: \"user=backup password=%{lookup('backup_password')}\"\n"
    )
    files = {
        "profiles/backup.yaml": """
            params:
              dsn: ""
              copy: "{{ lookup('backup_password') }}"
            resources:
              - directory: /etc/backup
              - file: /etc/backup/password
                content: "{{ lookup('backup_password') }}\\n"
              - file: /etc/backup/dsn
                content: "{{ params.dsn }}\\n"
              - file: /etc/backup/url
                template: backup-url.j2
            """,
        "templates/backup-url.j2": "url = {{ lookup('backup_url') }}\n",
    }
    write_tree(site.repo, files)
    return line


def test_a_free_key_encrypted_with_age_is_decrypted_wherever_it_is_read(
    site: Site, cli: CLI
) -> None:
    with_free_key(site)
    (site.repo / "roles/db.yaml").write_text("profiles: [db, backup]\n")
    config = site.db_config()

    plan = cli.run("plan", site.repo, "--config", str(config), "--format", "json", check=2)
    text = cli.run("plan", site.repo, "--config", str(config), check=2)
    done = cli.run("apply", site.repo, "--config", str(config), "--format", "json", check=2)
    status = cli("status", "--state-dir", str(cli.state), "--format", "json", check=0)

    password = (cli.root / "etc/backup/password").read_text()
    url = (cli.root / "etc/backup/url").read_text()
    assert password == BACKUP_PASSWORD + "\n"
    assert (cli.root / "etc/backup/dsn").read_text() == (
        f"user=backup password={BACKUP_PASSWORD}\n"
    )
    assert url == f"url = s3://backup:{BACKUP_PASSWORD}@store\n"
    # Each file that used it is sensitive: its content is shown as its digest.
    shown = {r["id"]: json.dumps(r) for r in json.loads(plan.stdout)["resources"]}
    assert digest(password) in shown["file:/etc/backup/password"]
    assert digest(url) in shown["file:/etc/backup/url"]
    assert digest(password)[:19] in text.stdout  # the text plan shortens digests
    outputs = [plan.stdout, plan.stderr, text.stdout, done.stdout, done.stderr, status.stdout]
    stored = files_under(cli.state)
    assert stored
    assert not any(BACKUP_PASSWORD in output for output in outputs)
    assert not [p for p, data in stored.items() if BACKUP_PASSWORD.encode() in data]

    # A node that does not read it is not troubled by it, though it cannot decrypt it.
    web = cli.run("apply", site.repo, "--config", str(site.web_config()), check=2)
    assert (cli.root / "etc/motd").read_text() == "hello\n"
    assert "cannot decrypt" not in web.stderr


def test_a_lookup_of_a_value_the_node_cannot_decrypt_names_its_file_line_and_key(
    site: Site, cli: CLI
) -> None:
    line = with_free_key(site)
    (site.repo / "profiles/web.yaml").write_text(
        "resources:\n"
        "  - file: /etc/backup-password\n"
        "    content: \"{{ lookup('backup_password') }}\\n\"\n"
    )

    done = cli.run("apply", site.repo, "--config", str(site.web_config()), check=1)

    assert f"data/common.yaml:{line}, key 'backup_password': cannot decrypt ENC[AGE,...]" in (
        done.stderr
    )
    assert f"reconciler.yaml lists {site.web_recipient} for node 'web-1' or role 'web'" in (
        done.stderr
    )
    assert not (cli.root / "etc/backup-password").exists()  # nothing of it written as ENC[...]


def test_an_app_parameter_encrypted_in_data_is_decrypted_in_its_component(
    site: Site, cli: CLI
) -> None:
    files = {
        "apps/vault.yaml": """
            version: "1.0"
            params:
              token: ""
            components:
              - name: agent
                nodes: {role: db}
                resources:
                  - file: /etc/vault-agent.conf
                    content: "token = {{ params.token }}\\n"
            """,
        "data/roles/db.yaml": f"app:vault:\n  token: {age_encrypt(VAULT_TOKEN, site.db_recipient)}\n",
    }
    write_tree(site.repo, files)

    plan = cli.run("plan", site.repo, "--config", str(site.db_config()), "--format", "json")
    done = cli.run("apply", site.repo, "--config", str(site.db_config()), check=2)

    conf = (cli.root / "etc/vault-agent.conf").read_text()
    assert conf == f"token = {VAULT_TOKEN}\n"
    shown = {r["id"]: json.dumps(r) for r in json.loads(plan.stdout)["resources"]}
    assert digest(conf) in shown["file:/etc/vault-agent.conf"]
    assert VAULT_TOKEN not in plan.stdout + plan.stderr + done.stdout + done.stderr
    # Not yet: what a node deployed of a component (to enforce it while a newer version waits,
    # and to roll back) is kept with its attributes under state/apps/, a sensitive file's
    # content too (as for any `sensitive: true` resource of an app).
    record = cli.state / "apps/vault/agent.json"
    stored = files_under(cli.state)
    assert not [p for p, data in stored.items() if VAULT_TOKEN.encode() in data and p != record]


def test_explain_shows_an_encrypted_value_as_its_digest(site: Site, cli: CLI) -> None:
    with_free_key(site)
    config = str(site.db_config())

    free = cli("explain", "backup_password", "--repo", str(site.repo), "--config", config)
    param = cli("explain", "db.password", "--repo", str(site.repo), "--config", config)
    keyless = cli("explain", "backup_password", "--repo", str(site.repo), "--node", "db-1")
    default = cli("explain", "backup.copy", "--repo", str(site.repo), "--config", config)

    assert free.returncode == param.returncode == keyless.returncode == 0, free.stderr
    assert default.returncode == 0, default.stderr
    assert f"backup.copy = {digest(json.dumps(BACKUP_PASSWORD))}" in default.stdout
    assert f"backup_password = {digest(json.dumps(BACKUP_PASSWORD))}" in free.stdout
    assert f"db.password = {digest(json.dumps(DB_PASSWORD))}" in param.stdout
    for done in (free, param):
        assert "encrypted in data: decrypted with this node's keys" in done.stdout
        assert "set by data level 'common.yaml'" in done.stdout
    assert "encrypted in data: shown as the digest of what is written" in keyless.stdout
    assert "ENC[AGE," not in keyless.stdout
    for done in (free, param, keyless, default):
        assert BACKUP_PASSWORD not in done.stdout + done.stderr
        assert DB_PASSWORD not in done.stdout + done.stderr


def test_what_looks_up_an_encrypted_value_is_sensitive_though_it_is_short(
    site: Site, cli: CLI
) -> None:
    # Too short to be searched for in text (6 characters): only its use makes them sensitive.
    pin = "zqkx"
    common = site.repo / "data/common.yaml"
    common.write_text(common.read_text() + f"pin: {age_encrypt(pin, site.db_recipient)}\n")
    files = {
        "roles/db.yaml": "profiles: [db, keypad]\n",
        "types/keypad.yaml": """
            params:
              code: {type: string}
            resources:
              - file: "/etc/keypad/{{ title }}"
                content: "code {{ params.code }}\\n"
            """,
        "profiles/keypad.yaml": """
            params:
              code: "{{ lookup('pin') }}"
            resources:
              - directory: /etc/keypad
              - file: /etc/keypad/pin
                content: "{{ lookup('pin') }}\\n"
              - file: /etc/keypad/param
                content: "param {{ params.code }}\\n"
              - keypad: door
                code: "{{ lookup('pin') }}"
              - file: /etc/keypad/each
                for_each: "{{ [lookup('pin')] }}"
                content: "each {{ item }}\\n"
              - file: /etc/keypad/plain
                content: "no secret here\\n"
            """,
    }
    write_tree(site.repo, files)

    config = str(site.db_config())
    cli.run("apply", site.repo, "--config", config, check=2)
    assert (cli.root / "etc/keypad/pin").read_text() == f"{pin}\n"
    assert (cli.root / "etc/keypad/door").read_text() == f"code {pin}\n"
    # Drift: a file that is sensitive shows no diff, which would show its text.
    paths = ("pin", "param", "door", "each", "plain")
    for name in paths:
        (cli.root / "etc/keypad" / name).write_text("tampered\n")
    plan = cli.run("plan", site.repo, "--config", config, "--format", "json", check=2)

    shown = {r["id"].rsplit("/", 1)[-1]: r for r in json.loads(plan.stdout)["resources"]}
    for name in paths:
        (content,) = [c for c in shown[name]["changes"] if c["property"] == "content"]
        assert ("diff" in content) == (name == "plain"), name
        assert pin not in json.dumps(shown[name]), name
