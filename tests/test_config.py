from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.config import load_config, parse_config
from reconciler.errors import ConfigError
from reconciler.units import parse_duration

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.yaml"


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25), (45, 45.0)],
    )
    def test_units(self, text: str | int, seconds: float) -> None:
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["5 minutes", "-1s", "1w", "", True])
    def test_bad(self, text: object) -> None:
        with pytest.raises(ValueError):
            parse_duration(text)


class TestConfig:
    def test_example_file_is_valid_and_documents_the_defaults(self) -> None:
        config = load_config(EXAMPLE)
        assert config.source.url == "https://git.example.com/infra/control-repo.git"
        assert config.source.branch == "production"
        assert config.source.poll_interval == 60.0
        assert config.reconcile.interval == 1800.0
        assert config.reconcile.splay == 300.0
        assert config.listen == "127.0.0.1:9717"
        assert config.state_dir == Path("/var/lib/reconciler")
        assert (config.http.request_timeout, config.http.max_connections) == (10.0, 32)
        assert config.reconcile.max_file_size == 64 * 1024 * 1024

    def test_facts_are_published_when_coordination_is_configured(self) -> None:
        assert not parse_config("node: a\n", "c").coordination.configured
        configured = parse_config("coordination: {backend: local}\n", "c").coordination
        assert configured.configured and configured.publish_facts
        assert configured.facts_ttl == 6 * 3600
        chosen = parse_config("coordination: {facts_ttl: 2h, publish_facts: false}\n", "c")
        assert (chosen.coordination.facts_ttl, chosen.coordination.publish_facts) == (7200, False)
        example = load_config(EXAMPLE).coordination
        assert example.configured and example.publish_facts
        with pytest.raises(ConfigError) as err:
            parse_config("coordination:\n  facts_ttl: 0s\n  publish_facts: yes please\n", "c")
        assert "c:2, key 'coordination.facts_ttl': must be more than zero" in str(err.value)
        assert "c:3, key 'coordination.publish_facts': must be true or false" in str(err.value)

    def test_the_local_store_is_beside_the_state_unless_set(self, tmp_path: Path) -> None:
        from reconciler.apps.store import ComponentState, open_store

        config = parse_config(f"state_dir: {tmp_path / 'state'}\n", "c")
        assert config.coordination.path == tmp_path / "state" / "coordination"
        store = open_store(config.coordination)
        store.publish("shop", "db", ComponentState("db-1", "1.0", "healthy", "abc", 1.0))
        assert (tmp_path / "state/coordination/apps/shop/db/db-1.json").is_file()
        chosen = parse_config(f"coordination: {{path: {tmp_path / 'shared'}}}\n", "c")
        assert chosen.coordination.path == tmp_path / "shared"
        assert load_config(EXAMPLE).coordination.path == Path("/var/lib/reconciler/coordination")

    def test_max_file_size_takes_units(self) -> None:
        assert parse_config("reconcile: {max_file_size: 1GiB}\n", "c").reconcile.max_file_size == (
            1024**3
        )
        assert parse_config("reconcile: {max_file_size: 4096}\n", "c").reconcile.max_file_size == (
            4096
        )
        with pytest.raises(ConfigError, match=r"c:1, key 'reconcile.max_file_size': 'lots'"):
            parse_config("reconcile: {max_file_size: lots}\n", "c")

    def test_http_bounds_are_checked(self) -> None:
        with pytest.raises(ConfigError) as err:
            parse_config("http:\n  request_timeout: 0s\n  max_connections: 0\n", "c.yaml")
        assert "c.yaml:2, key 'http.request_timeout': must be more than zero" in str(err.value)
        assert "c.yaml:3, key 'http.max_connections': must be a whole number" in str(err.value)

    def test_push_is_on_once_the_daemons_share_a_store(self) -> None:
        assert not parse_config("node: web-1\n", "c").coordination.push
        shared = parse_config("coordination: {backend: etcd}\n", "c").coordination
        assert shared.push and shared.push_min_interval == 10.0
        off = parse_config("coordination:\n  push: false\n  push_min_interval: 1m\n", "c")
        assert (off.coordination.push, off.coordination.push_min_interval) == (False, 60.0)
        assert load_config(EXAMPLE).coordination.push
        with pytest.raises(ConfigError) as err:
            parse_config("coordination:\n  push: yes please\n  push_min_interval: 0s\n", "c")
        assert "c:2, key 'coordination.push': must be true or false" in str(err.value)
        assert "c:3, key 'coordination.push_min_interval': must be more than zero" in str(err.value)

    def test_every_problem_is_named_with_its_line(self) -> None:
        text = "source:\n  url: /srv/repo\n  poll_interval: soon\n  colour: blue\nreconcile:\n  mode: yolo\nlistn: x\n"
        with pytest.raises(ConfigError) as err:
            parse_config(text, "/etc/reconciler/config.yaml")
        message = str(err.value)
        assert (
            "/etc/reconciler/config.yaml:3, key 'source.poll_interval': 'soon' is not a duration"
            in message
        )
        assert "/etc/reconciler/config.yaml:4, key 'source.colour': unknown key" in message
        assert (
            "/etc/reconciler/config.yaml:6, key 'reconcile.mode': must be one of enforce, noop"
            in message
        )
        assert "/etc/reconciler/config.yaml:7, key 'listn': unknown key" in message

    @pytest.mark.parametrize(
        "url", ["ext::sh -c 'touch /tmp/x'", "-u/tmp/x", "ftp://host/repo.git", "fd::3"]
    )
    def test_dangerous_urls_are_refused_before_git_runs(self, url: str) -> None:
        with pytest.raises(ConfigError, match=r"source.url"):
            parse_config(f'source:\n  url: "{url}"\n', "c.yaml")

    def test_secrets_name_the_nodes_key_files(self) -> None:
        config = parse_config("secrets:\n  age_identity: /etc/reconciler/age.key\n", "c.yaml")
        assert config.secrets.age_identity == Path("/etc/reconciler/age.key")
        assert config.secrets.eyaml_private_key is None
        with pytest.raises(ConfigError) as err:
            parse_config(
                "secrets:\n  eyaml_private_key: /k.pem\n  age_identiy: /a\n  age_identity: a\n",
                "c.yaml",
            )
        message = str(err.value)
        assert "c.yaml:3, key 'secrets.age_identiy': unknown key" in message
        assert "c.yaml:4, key 'secrets.age_identity': must be an absolute path" in message
        assert "key 'secrets': eyaml_private_key and eyaml_public_key go together" in message

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read the configuration"):
            load_config(tmp_path / "nope.yaml")
