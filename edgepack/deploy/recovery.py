"""Opening a model's store: take its lock, clean what an interrupted run left, make the link match state."""

from __future__ import annotations

import contextlib
from pathlib import PurePosixPath
from typing import Iterator

from edgepack.deploy.activate import retire, swap_link
from edgepack.deploy.fs import DeviceFS
from edgepack.deploy.layout import ModelStore
from edgepack.deploy.state import append_history, read_state, write_state
from edgepack.errors import EdgepackError


def reconcile(store: ModelStore, state: dict) -> None:
    """Undo an interrupted trial or install, point `current` at the active version.

    Only what state.json accounts for is ever deleted: leftovers with our temporary prefixes, and the
    directory of an install recorded as in progress (`installing`). Any other version directory
    that state.json does not list is left in place (`edgepack repair` adopts it).
    """
    for leftover in store.leftovers():
        store.fs.rmtree(leftover)
    trial = state.get("trial")
    if trial:
        entry = state["versions"].get(trial["version"])
        if entry is not None:
            entry.update(health="bad", detail="its deploy was interrupted before the health check finished")
        state["trial"] = None
        write_state(store, state)
        append_history(store, "recovered", trial["version"], active=state["active"],
                       detail="interrupted trial undone; the active version was restored")
    installing = state.get("installing")
    if installing:  # renamed into place (or about to be), killed before state recorded it
        if installing not in state["versions"] and installing in store.installed():
            retire(store, store.version_dir(installing))
        state["installing"] = None
        write_state(store, state)
    if store.linked_version() != state["active"]:
        swap_link(store, state["active"])


@contextlib.contextmanager
def open_store(fs: DeviceFS, root: PurePosixPath, model: str, create: bool = False) -> Iterator[tuple[ModelStore, dict]]:
    """Lock the model's store, reconcile it, and yield it with its state."""
    store = ModelStore(fs, root, model)
    if create:
        fs.mkdirs(store.versions_dir)
    elif not fs.is_dir(store.dir):
        raise EdgepackError(f"no model '{model}' on device '{store.where}'", "deploy it first")
    with fs.lock(store.lock_file, f"'{model}' on '{store.where}'"):
        state = read_state(store)
        reconcile(store, state)
        yield store, state
