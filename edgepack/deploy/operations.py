"""The five device operations behind the CLI: deploy, rollback, remove, status, versions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgepack.deploy.activate import activate_on_trial, retire
from edgepack.deploy.checked import CheckedBundle, check_on_host, device_keys
from edgepack.deploy.device import existing_root, parse_device, pick_model
from edgepack.deploy.faults import fault_point
from edgepack.deploy.health import HealthCheckFailed, HealthConfig, HealthResult, check_runnable
from edgepack.deploy.layout import ModelStore, check_name
from edgepack.deploy.recovery import open_store
from edgepack.deploy.state import append_history, now, write_state
from edgepack.deploy.transfer import stage_bundle
from edgepack.deploy.versioning import check_not_downgrade, compare_versions, newest_good, same_content
from edgepack.errors import EdgepackError
from edgepack.runtime.bundle_format import MANIFEST


@dataclass(frozen=True)
class ActivationResult:
    """A version that passed its health check and is now active."""

    model: str
    version: str
    previous: str | None
    health: HealthResult


def _failed(model: str, version: str, active: str | None, health: HealthResult, fix: str) -> HealthCheckFailed:
    now_active = f"{active} is active" if active else "no version is active"
    return HealthCheckFailed(f"{model} {version} failed its health check ({health.detail}), so {now_active}", fix)


def _install(store: ModelStore, state: dict, checked: CheckedBundle, force: bool) -> None:
    """Stage and check the bundle on the device, then rename it into versions/<version>."""
    manifest = checked.manifest
    version = manifest["version"]
    if version in state["versions"]:
        identical = same_content(store, version, manifest)
        if version == state["active"] and not force:
            if not identical:
                raise EdgepackError(f"{store.model} {version} is active on the device with other files (another bundle under the same version)",
                                    "build the bundle under a new version")
            raise EdgepackError(f"{store.model} {version} is already the active version", "deploy a bundle with a new version")
        if not force:
            if not identical:
                raise EdgepackError(f"{store.model} {version} on the device holds other files (another bundle under the same version)",
                                    "build the bundle under a new version, or pass --force to replace the installed one")
            raise EdgepackError(f"{store.model} {version} is already on the device",
                                f"pass --force to replace it, or `edgepack rollback DEVICE --to {version}` to activate it")
        if version == state["active"]:
            raise EdgepackError(f"{store.model} {version} is the active version and cannot be replaced in place",
                                "deploy it under a new version, or roll back to another version first")
    elif not force:
        check_not_downgrade(store, state, manifest)
    newest = newest_good(state)
    downgrade = {"downgrade_from": newest} if newest and (compare_versions(version, newest) or 0) < 0 else {}
    staging, staged = stage_bundle(checked, store)
    fault_point("stage")
    if version in state["versions"]:
        del state["versions"][version]
        state["previous"] = None if state["previous"] == version else state["previous"]
        write_state(store, state)
        append_history(store, "replaced", version)
        retire(store, store.version_dir(version))
    state["installing"] = version  # so that a run killed before the next write may remove the directory
    write_state(store, state)
    store.fs.replace(staging, store.version_dir(version))
    fault_point("rename")
    state["installing"] = None
    state["versions"][version] = {"installed": now(), "target": staged["target"]["name"], "health": "untested",
                                  "last_check": None, "detail": "installed, not checked yet"}
    write_state(store, state)
    append_history(store, "installed", version, target=staged["target"]["name"], **downgrade)


def deploy(bundle: Path, device: str, force: bool = False, health: HealthConfig = HealthConfig()) -> ActivationResult:
    """Install a bundle on the device, activate it on trial, keep it only if its health check passes.

    Raises HealthCheckFailed (exit 5) when it did not pass; the previously active version is then current.
    """
    fs, root = parse_device(device)
    checked = check_on_host(Path(bundle), device_keys(fs, health.keyring))  # before the store is touched
    manifest = checked.manifest
    model = check_name("model name", str(manifest.get("name", "")))
    version = check_name("version", str(manifest.get("version", "")))
    check_runnable(manifest, fs)
    with open_store(fs, root, model, create=True) as (store, state):
        _install(store, state, checked, force)
        previous = state["active"]
        result = activate_on_trial(store, state, version, health)
        if not result.passed:
            raise _failed(model, version, state["active"], result,
                          "check the bundle with `edgepack verify`, then deploy it again with --force")
        return ActivationResult(model, version, previous, result)


def rollback(device: str, to: str | None = None, model: str | None = None, health: HealthConfig = HealthConfig()) -> ActivationResult:
    """Activate the previous version (or `to`), again gated by its health check."""
    fs, root = existing_root(device)
    with open_store(fs, root, pick_model(fs, root, model)) as (store, state):
        target = to or state["previous"]
        if target is None:
            raise EdgepackError(f"{store.model} has no previous version to roll back to", "pass --to VERSION (see edgepack versions)")
        if target not in state["versions"]:
            raise EdgepackError(f"{store.model} {target} is not on the device (versions: {', '.join(state['versions']) or 'none'})",
                                "pass --to with one of those")
        if target == state["active"]:
            raise EdgepackError(f"{store.model} {target} is already active", "pass --to with another version")
        previous = state["active"]
        result = activate_on_trial(store, state, target, health)
        if not result.passed:
            raise _failed(store.model, target, state["active"], result, "pick another version with --to, or deploy a fixed bundle")
        return ActivationResult(store.model, target, previous, result)


def remove(device: str, version: str, model: str | None = None) -> None:
    """Delete an installed version that is not active."""
    fs, root = existing_root(device)
    with open_store(fs, root, pick_model(fs, root, model)) as (store, state):
        if version not in state["versions"]:
            raise EdgepackError(f"{store.model} {version} is not on the device (versions: {', '.join(state['versions']) or 'none'})",
                                "pass one of those")
        if version == state["active"]:
            raise EdgepackError(f"{store.model} {version} is the active version", "roll back to another version first")
        del state["versions"][version]
        state["previous"] = None if state["previous"] == version else state["previous"]
        write_state(store, state)
        append_history(store, "removed", version)
        retire(store, store.version_dir(version))


def status(device: str, model: str | None = None) -> dict:
    """The active and previous version of a model, the active one's health and last check."""
    fs, root = existing_root(device)
    with open_store(fs, root, pick_model(fs, root, model)) as (store, state):
        active = state["versions"].get(state["active"], {}) if state["active"] else {}
        health = active.get("health")
        if state["active"] and store.fs.read_text(store.version_dir(state["active"]) / MANIFEST) is None:
            health = "missing"  # its directory is there but its bundle is not: never "good"
            active = {**active, "detail": "the active version's files are gone; run edgepack repair, then deploy again"}
        return {"device": store.where, "model": store.model, "active": state["active"], "previous": state["previous"],
                "health": health, "last_check": active.get("last_check"), "detail": active.get("detail"),
                "versions": len(state["versions"])}


def versions(device: str, model: str | None = None) -> list[dict]:
    """Every installed version with its target, health, install time and last check, oldest first."""
    fs, root = existing_root(device)
    with open_store(fs, root, pick_model(fs, root, model)) as (store, state):
        rows = [{"version": version, "active": version == state["active"], "previous": version == state["previous"], **entry}
                for version, entry in state["versions"].items()]
        return sorted(rows, key=lambda row: row["installed"])
