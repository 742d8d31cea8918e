"""`edgepack repair DEVICE`: rebuild a missing or corrupt state.json from what the device still holds.

The evidence is the version directories under versions/ (each with its manifest), history.jsonl
(installed, activated, rolled back, removed...) and the `current` link. Nothing is deleted: a
directory that is not a readable bundle of its own version is left in place and reported.
"""

from __future__ import annotations

from edgepack.deploy.activate import swap_link
from edgepack.deploy.device import existing_root, pick_model
from edgepack.deploy.layout import ModelStore
from edgepack.deploy.state import append_history, new_state, now, read_history, write_state
from edgepack.runtime.bundle_format import MANIFEST, BundleError, check_manifest_fields, parse_manifest

_BAD_EVENTS = {"rolled_back": "rolled back after a failed health check", "recovered": "its deploy was interrupted"}


def _bundle_manifest(store: ModelStore, version: str) -> dict | None:
    """The manifest of versions/<version>, or None when it is not a readable bundle of that version."""
    try:
        text = store.fs.read_text(store.version_dir(version) / MANIFEST)
        if text is None:
            return None
        manifest = parse_manifest(text.encode("utf-8"), MANIFEST)
        check_manifest_fields(manifest)
    except (BundleError, UnicodeDecodeError):
        return None
    return manifest if manifest.get("version") == version else None


def rebuild_state(store: ModelStore, history: list[dict]) -> tuple[dict, list[str]]:
    """A state from the installed bundles and the history; returns it and the directories left unaccounted for."""
    state, skipped = new_state(store.model), []
    for version in store.installed():
        manifest = _bundle_manifest(store, version)
        if manifest is None:
            skipped.append(version)
            continue
        state["versions"][version] = {"installed": now(), "target": str(manifest.get("target", {}).get("name", "")),
                                      "health": "untested", "last_check": None, "detail": "found by edgepack repair, not checked since"}
    active = previous = None
    for event in history:
        version, kind = event.get("version"), event.get("event")
        entry = state["versions"].get(version) if isinstance(version, str) else None
        if entry is None:
            continue
        if kind == "installed" and isinstance(event.get("time"), str):
            entry["installed"] = event["time"]
        elif kind == "activated":
            entry.update(health="good", detail="passed its health check (from history.jsonl)")
            active, previous = version, event.get("previous")
        elif kind in _BAD_EVENTS:
            entry.update(health="bad", detail=f"{_BAD_EVENTS[kind]} (from history.jsonl)")
    linked = store.linked_version()
    if linked in state["versions"] and state["versions"][linked]["health"] == "good":
        active = linked  # the device ran this one last
    state["active"] = active
    state["previous"] = previous if previous in state["versions"] and previous != active else None
    return state, skipped


def repair(device: str, model: str | None = None) -> dict:
    """Rebuild a model's state.json on the device (under its lock) and point `current` at the active version."""
    fs, root = existing_root(device)
    store = ModelStore(fs, root, pick_model(fs, root, model))
    with fs.lock(store.lock_file, f"'{store.model}' on '{store.where}'"):
        state, skipped = rebuild_state(store, read_history(store))
        write_state(store, state)
        if store.linked_version() != state["active"]:
            swap_link(store, state["active"])
        append_history(store, "repaired", state["active"], versions=sorted(state["versions"]), left_alone=skipped)
    return {"device": store.where, "model": store.model, "active": state["active"], "previous": state["previous"],
            "versions": {version: entry["health"] for version, entry in state["versions"].items()}, "left_alone": skipped}
