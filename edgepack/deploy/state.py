"""state.json (what is active, what was, the health of each version) and history.jsonl (events)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from edgepack.deploy.layout import ModelStore, unique
from edgepack.errors import EdgepackError

STATE_SCHEMA = 1


def now() -> str:
    """ISO-8601 UTC time, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def new_state(model: str) -> dict:
    return {"schema_version": STATE_SCHEMA, "model": model, "active": None, "previous": None, "trial": None, "versions": {}}


def read_state(store: ModelStore) -> dict:
    """The model's state, or a fresh one when the store has none yet."""
    text = store.fs.read_text(store.state_file)
    if text is None:
        return new_state(store.model)
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EdgepackError(f"{store.fs.describe(store.state_file)} is not valid JSON ({exc})",
                            "restore it from a backup or remove the model's store") from None
    if state.get("schema_version", 0) > STATE_SCHEMA:
        raise EdgepackError(f"{store.fs.describe(store.state_file)} has schema_version {state['schema_version']}, "
                            f"this edgepack reads {STATE_SCHEMA}", "update edgepack")
    return state


def write_state(store: ModelStore, state: dict) -> None:
    """Replace state.json atomically (temp file, fsync, rename, directory fsync)."""
    text = json.dumps(state, indent=2, sort_keys=True) + "\n"
    store.fs.write_atomic(store.state_file, text, unique(store.dir, ".state.json."))


def append_history(store: ModelStore, event: str, version: str | None, **detail) -> None:
    """Append one event line to history.jsonl, durably."""
    record = {"time": now(), "event": event, "version": version, **detail}
    store.fs.append_line(store.history_file, json.dumps(record, sort_keys=True) + "\n")


def read_history(store: ModelStore) -> list[dict]:
    """Every complete event line; a line cut short by a crash mid-append is skipped."""
    events = []
    for line in (store.fs.read_text(store.history_file) or "").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
