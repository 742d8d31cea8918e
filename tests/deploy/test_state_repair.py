"""A missing or corrupt state.json is refused in one line naming `edgepack repair`; nothing installed is
ever deleted because of it, and `repair` rebuilds the state from history and the version directories
(issue 15, item 8)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgepack.deploy import deploy, remove, rollback, status, versions
from edgepack.deploy.repair import repair
from edgepack.errors import EdgepackError
from deploy_helpers import linked, model_dir, state
from test_hostile_bundle import tree_digest

pytestmark = [pytest.mark.tvm, pytest.mark.cli]


@pytest.fixture(scope="module")
def template(bundles, tmp_path_factory) -> Path:
    """A store with 1.0.0 (previous) and 2.0.0 (active), both healthy; copied for each case."""
    device = tmp_path_factory.mktemp("state-template") / "device"
    deploy(bundles["good1"], str(device))
    deploy(bundles["good2"], str(device))
    return device


@pytest.fixture()
def store(template, tmp_path) -> Path:
    device = tmp_path / "device"
    shutil.copytree(template, device, symlinks=True)
    return device


def _set(**changes):
    def corrupt(device: Path):
        saved = state(device)
        saved.update(changes)
        (model_dir(device) / "state.json").write_text(json.dumps(saved))
    return corrupt


def _text(data: bytes):
    return lambda device: (model_dir(device) / "state.json").write_bytes(data)


CORRUPT = {
    "deleted": lambda device: (model_dir(device) / "state.json").unlink(),
    "versions-list": _set(versions=[]),
    "active-missing": _set(active="5.0.0"),
    "previous-missing": _set(previous="0.5.0"),
    "not-json": _text(b'{"versions": {'),
    "not-utf8": _text(b'{"model": "\xff\xfe"}'),
    "array": _text(b"[]"),
    "empty-object": _text(b"{}"),
    "schema-string": _set(schema_version="1"),
    "other-model": _set(model="other"),
    "active-int": _set(active=1),
    "entry-string": lambda device: _set(versions={**state(device)["versions"], "1.0.0": "good"})(device),
    "health-unknown": lambda device: _set(versions={**state(device)["versions"],
                                                    "2.0.0": {**state(device)["versions"]["2.0.0"], "health": "excellent"}})(device),
    "trial-string": _set(trial="2.0.0"),
    "active-dir-gone": lambda device: shutil.rmtree(model_dir(device) / "versions" / "2.0.0"),
}


FULL_CYCLE = ("deleted", "versions-list", "active-dir-gone")


@pytest.mark.parametrize("form", sorted(CORRUPT))
def test_corrupt_state_is_refused_and_repaired_without_losing_a_version(bundles, store, cli, form):
    CORRUPT[form](store)
    before = tree_digest(store)
    result = cli("status", store)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and f"edgepack repair {store} --model tiny" in result.stderr, result.stderr
    for command in (lambda: deploy(bundles["good3"], str(store)), lambda: rollback(str(store)), lambda: versions(str(store)),
                    lambda: remove(str(store), "1.0.0"), lambda: status(str(store))):
        with pytest.raises(EdgepackError, match="edgepack repair"):
            command()
        assert tree_digest(store) == before, form  # refused: nothing deleted, nothing written

    on_disk = sorted(path.name for path in (model_dir(store) / "versions").iterdir())
    if form in FULL_CYCLE:  # through the CLI, then a deploy; the other forms repair in-process (fast)
        repaired = cli("repair", store)
        assert repaired.returncode == 0 and "repaired tiny" in repaired.stdout, repaired.stderr
    else:
        repair(str(store))
    assert sorted(path.name for path in (model_dir(store) / "versions").iterdir()) == on_disk  # repair deletes nothing
    info = status(str(store))
    expected = "1.0.0" if form == "active-dir-gone" else "2.0.0"
    assert (info["active"], info["health"]) == (expected, "good") and linked(store) == expected
    assert sorted(state(store)["versions"]) == on_disk
    if form in FULL_CYCLE:
        assert deploy(bundles["good3"], str(store)).previous == expected  # the store works again


def test_status_never_says_good_when_the_active_files_are_gone(store, cli):
    (model_dir(store) / "versions" / "2.0.0" / "manifest.json").unlink()
    info = status(str(store))
    assert info["active"] == "2.0.0" and info["health"] == "missing"
    assert cli("repair", store).returncode == 0
    assert (model_dir(store) / "versions" / "2.0.0").is_dir()  # not a bundle any more, but not ours to delete
    assert (status(str(store))["active"], linked(store)) == ("1.0.0", "1.0.0")


def test_an_unrecorded_version_directory_is_never_deleted(bundles, store):
    stray = model_dir(store) / "versions" / "5.0.0"
    shutil.copytree(model_dir(store) / "versions" / "1.0.0", stray)
    assert status(str(store))["active"] == "2.0.0"
    deploy(bundles["good3"], str(store))
    assert stray.is_dir() and "5.0.0" not in state(store)["versions"]
