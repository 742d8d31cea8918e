"""Atomic activation (a symlink swap) after a health check of the new version in its own directory."""

from __future__ import annotations

from pathlib import PurePosixPath

from edgepack.deploy.faults import fault_point
from edgepack.deploy.health import HealthConfig, HealthResult, check_health
from edgepack.deploy.layout import ModelStore, unique
from edgepack.deploy.state import append_history, now, write_state


def swap_link(store: ModelStore, version: str | None, faults: bool = False) -> None:
    """Point `current` at versions/<version> (None: remove it): temp link, os.replace, directory fsync."""
    if version is None:
        store.fs.unlink(store.current)
        return
    temp = unique(store.dir, ".current-")
    store.fs.symlink(f"versions/{version}", temp)
    if faults:
        fault_point("link")
    store.fs.replace(temp, store.current)
    if faults:
        fault_point("swap")


def retire(store: ModelStore, path: PurePosixPath) -> None:
    """Remove a directory so that it vanishes at once: rename it to .trash-*, then delete it."""
    trash = unique(path.parent, ".trash-")
    store.fs.replace(path, trash)
    store.fs.rmtree(trash)


def _record_check(state: dict, version: str, result: HealthResult) -> None:
    entry = state["versions"][version]
    entry.update(health="good" if result.passed else "bad", last_check=now(), detail=result.detail)
    if result.median_ms is not None:
        entry["median_ms"] = result.median_ms


def activate_on_trial(store: ModelStore, state: dict, version: str, config: HealthConfig) -> HealthResult:
    """Check `version` through its own directory while `current` stays on the active one; switch only if it passes.

    The trial is recorded in state.json first, so that a run killed mid-trial is undone at the next
    start (`recovery.reconcile`). A device service starting from `current` during the check still
    finds the last good version: `current` and `state["active"]` change only after a passed check.
    """
    kept = state["active"]
    state["trial"] = {"version": version, "previous": kept, "started": now()}
    write_state(store, state)
    try:
        result = check_health(store.fs, store.version_dir(version), config)
        if result.passed:
            swap_link(store, version, faults=True)
    except BaseException:  # Ctrl-C or a bug mid-trial: leave (or put) `current` on the active version
        result = HealthResult(False, "the trial was interrupted")
        _record_check(state, version, result)
        state["trial"] = None
        if store.linked_version() != kept:
            swap_link(store, kept)
        write_state(store, state)
        append_history(store, "rolled_back", version, active=kept, detail=result.detail)
        raise
    _record_check(state, version, result)
    state["trial"] = None
    if result.passed:
        state["active"], state["previous"] = version, kept
        write_state(store, state)
        append_history(store, "activated", version, previous=kept, detail=result.detail)
    else:
        write_state(store, state)
        append_history(store, "rolled_back", version, active=kept, detail=result.detail)
    return result
