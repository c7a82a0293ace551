"""The syntax of a resource: its first key names the type; later keys are attributes, even
those named like a type (``group``, ``user``). The old form, one type key anywhere, still reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.demo import copy_example
from reconciler.errors import ModelError
from reconciler.model.catalog import repo_warnings, validate_repo
from reconciler.model.modules import with_modules
from reconciler.source import DirectorySnapshot
from tests.conftest import CLI
from tests.model.test_catalog import FACTS, compile_repo, problems


def profile(body: str) -> dict[str, str]:
    return {"profiles/web.yaml": body}


class TestTypeFirst:
    def test_attributes_named_like_types_follow_the_type(
        self, make_repo: Callable[..., Path]
    ) -> None:
        catalog = compile_repo(
            make_repo,
            profile(
                """
                resources:
                  - file: /etc/x
                    group: adm
                    owner: root
                  - directory: /srv/x
                    group: adm
                  - exec: whoami
                    command: id -un
                    user: nobody
                  - line: "x = 1"
                    path: /etc/x
                """
            ),
        )
        assert catalog.entries["file:/etc/x"].resource.attrs["group"] == "adm"
        assert catalog.entries["directory:/srv/x"].resource.attrs["group"] == "adm"
        assert catalog.entries["exec:whoami"].resource.attrs["user"] == "nobody"
        assert sorted(catalog.entries) == [
            "directory:/srv/x",
            "exec:whoami",
            "file:/etc/x",
            "line:x = 1",
        ]

    def test_a_type_named_after_the_first_key_is_an_attribute_of_the_first(
        self, make_repo: Callable[..., Path]
    ) -> None:
        with pytest.raises(ModelError) as exc:
            compile_repo(make_repo, profile("resources:\n  - group: adm\n    file: /etc/x\n"))
        assert problems(exc) == [
            "profiles/web.yaml:3, key 'file': unknown attribute 'file' for group "
            "(its attributes: ensure, gid, system; and those of every type: "
            "before, noop, notify, require, sensitive, subscribe, when)"
        ]

    def test_the_type_is_the_first_key_as_written_not_a_merged_one(
        self, make_repo: Callable[..., Path]
    ) -> None:
        """A merge (``<<``) puts its keys first in the mapping; the type is still the first key
        written, and a mapping that begins with a merge is read the old way."""
        anchor = 'params:\n  admin: &admin {group: adm, mode: "0640"}\nresources:\n'
        merged = anchor + "  - file: /etc/merged\n    <<: *admin\n"
        catalog = compile_repo(make_repo, profile(merged))
        attrs = catalog.entries["file:/etc/merged"].resource.attrs
        assert (attrs["group"], attrs["mode"]) == ("adm", "0640")
        leading = anchor + "  - <<: *admin\n    file: /etc/ambiguous\n"
        with pytest.raises(ModelError) as exc:
            compile_repo(make_repo, profile(leading))
        found = problems(exc)
        assert len(found) == 1 and found[0].startswith(
            "profiles/web.yaml:4: the keys group, file all name resource types and the first "
            "key (a merge) names none"
        )


class TestOldOrder:
    OLD = """
        resources:
          - owner: root
            file: /etc/motd
            content: "hi\\n"
          - when: "facts.os.family == 'Debian'"
            package: nginx
        """

    def test_one_type_key_anywhere_still_reads(self, make_repo: Callable[..., Path]) -> None:
        catalog = compile_repo(make_repo, profile(self.OLD))
        assert catalog.entries["file:/etc/motd"].resource.attrs["owner"] == "root"
        assert "package:nginx" in catalog.entries

    def test_validate_warns_with_file_and_line(
        self, make_repo: Callable[..., Path], cli: CLI
    ) -> None:
        from tests.model.test_catalog import BASE

        repo = make_repo({**BASE, **profile(self.OLD)})
        assert validate_repo(DirectorySnapshot(repo), FACTS, "web-1") == []
        assert repo_warnings(DirectorySnapshot(repo)) == [
            f"profiles/web.yaml:{line}: write the type first, '- {kind}: ...' (a key named "
            "like a type, such as group or user, is an attribute only after the type)"
            for line, kind in ((2, "file"), (5, "package"))
        ]
        done = cli("validate", "--repo", str(repo), "--node", "web-1", check=0)
        assert "warning: profiles/web.yaml:2: write the type first, '- file: ...'" in done.stderr

    def test_several_type_keys_none_first_is_refused_with_file_and_line(
        self, make_repo: Callable[..., Path]
    ) -> None:
        files = profile(
            """
            resources:
              - file: /etc/fine
              - mode: "0644"
                file: /etc/x
                group: adm
            """
        )
        with pytest.raises(ModelError) as exc:
            compile_repo(make_repo, files)
        assert problems(exc) == [
            "profiles/web.yaml:3: the keys file, group all name resource types and the first "
            "key 'mode' names none, so the type is ambiguous: write the type as the first key, "
            "like '- file: /etc/motd' followed by 'group: adm'"
        ]

    def test_a_defined_type_parameter_named_like_a_type_draws_no_warning(
        self, make_repo: Callable[..., Path]
    ) -> None:
        # As Puppet's mysql::db has a `user` parameter: the use names its type first.
        repo = make_repo(
            {
                "types/db.yaml": "params:\n  user: {type: string}\nresources: []\n",
                **profile("resources:\n  - db: app\n    user: app\n"),
            }
        )
        assert repo_warnings(DirectorySnapshot(repo)) == []

    def test_the_example_repo_is_valid_and_writes_types_first(self, tmp_path: Path) -> None:
        repo = copy_example(tmp_path / "control-repo")  # its module pinned, fetched below
        snapshot = with_modules(DirectorySnapshot(repo), tmp_path / "state", 60.0)
        assert validate_repo(snapshot, FACTS, "web-1") == []
        assert not [w for w in repo_warnings(snapshot) if "write the type first" in w]


def test_the_first_key_survives_the_parse_cache(tmp_path: Path) -> None:
    """Large profiles come back from the parse cache: their mappings keep the first key."""
    from reconciler.model.yamlload import ParseCache, load, use_cache

    big = "resources:\n  - file: /etc/x\n    group: adm\n" + "# padding\n" * 8000
    use_cache(ParseCache(tmp_path / "cache"))
    try:
        load(big, "profiles/big.yaml")
        assert len(list((tmp_path / "cache").glob("*.pickle"))) == 1
        cached = load(big, "profiles/big.yaml")
    finally:
        use_cache(None)
    assert cached["resources"][0].first == "file"
