"""state.json (what is active, what was, the health of each version) and history.jsonl (events).

state.json is read strictly: a file of the wrong shape, or one naming a version whose directory is
gone, is refused in one line that names `edgepack repair DEVICE` (deploy/repair.py), never guessed
at, so that no command acts (let alone deletes) on a state it cannot trust.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from edgepack.deploy.layout import ModelStore, unique
from edgepack.errors import EdgepackError

STATE_SCHEMA = 1
HEALTH = ("good", "bad", "untested")


def now() -> str:
    """ISO-8601 UTC time, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def new_state(model: str) -> dict:
    """The state of a store that holds no version yet."""
    return {"schema_version": STATE_SCHEMA, "model": model, "active": None, "previous": None, "trial": None,
            "installing": None, "versions": {}}


def corrupt(store: ModelStore, why: str) -> EdgepackError:
    """The one-line refusal of a state.json that cannot be trusted, with its repair command."""
    return EdgepackError(f"{store.fs.describe(store.state_file)} {why}, so no command will act on this store",
                         f"run `edgepack repair {store.where} --model {store.model}` to rebuild it from history.jsonl "
                         "and the installed versions")


def _optional_str(value) -> bool:
    return value is None or isinstance(value, str)


def _entry_problem(version, entry) -> str | None:
    if not isinstance(version, str) or not version:
        return "names a version that is not a string"
    if not isinstance(entry, dict):
        return f"has a non-object entry for version '{version}'"
    if entry.get("health") not in HEALTH:
        return f"gives version '{version}' the health {entry.get('health')!r} (not one of {', '.join(HEALTH)})"
    for key in ("installed", "target", "detail"):
        if not isinstance(entry.get(key), str):
            return f"has no string '{key}' for version '{version}'"
    if not _optional_str(entry.get("last_check")):
        return f"has a non-string 'last_check' for version '{version}'"
    median = entry.get("median_ms")
    if median is not None and (isinstance(median, bool) or not isinstance(median, (int, float))):
        return f"has a non-numeric 'median_ms' for version '{version}'"
    return None


def state_problem(state, model: str, installed: list[str]) -> str | None:
    """What is wrong with a parsed state.json (None: nothing), given the version directories on the device."""
    if not isinstance(state, dict):
        return "is not a JSON object"
    schema = state.get("schema_version")
    if not isinstance(schema, int) or isinstance(schema, bool):
        return "has no integer schema_version"
    if state.get("model") != model:
        return f"names model {state.get('model')!r}, not '{model}'"
    versions = state.get("versions")
    if not isinstance(versions, dict):
        return "has no 'versions' object"
    for version, entry in versions.items():
        problem = _entry_problem(version, entry)
        if problem:
            return problem
    missing = sorted(set(versions) - set(installed))
    if missing:
        return f"lists version '{missing[0]}' whose directory is gone"
    for key in ("active", "previous", "installing"):
        if not _optional_str(state.get(key)):
            return f"has a non-string '{key}'"
    for key in ("active", "previous"):
        if state.get(key) is not None and state[key] not in versions:
            return f"names {key} version '{state[key]}', which it does not list"
    trial = state.get("trial")
    if trial is not None and (not isinstance(trial, dict) or not isinstance(trial.get("version"), str)
                              or not _optional_str(trial.get("previous"))):
        return "has a malformed 'trial'"
    return None


def read_state(store: ModelStore) -> dict:
    """The model's state, checked strictly; a fresh one for a store that holds no version and no state yet."""
    installed = store.installed()
    try:
        text = store.fs.read_text(store.state_file)
    except UnicodeDecodeError:
        raise corrupt(store, "is not UTF-8 text") from None
    if text is None:
        if installed:
            raise corrupt(store, f"is missing while versions/ holds {', '.join(installed)}")
        return new_state(store.model)
    try:
        state = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise corrupt(store, f"is not valid JSON ({str(exc).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("schema_version"), int) and state["schema_version"] > STATE_SCHEMA:
        raise EdgepackError(f"{store.fs.describe(store.state_file)} has schema_version {state['schema_version']}, "
                            f"this edgepack reads {STATE_SCHEMA}", "update edgepack")
    problem = state_problem(state, store.model, installed)
    if problem:
        raise corrupt(store, problem)
    state.setdefault("installing", None)
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
    """Every complete event line (a JSON object); a line cut short by a crash mid-append is skipped."""
    events = []
    for line in (store.fs.read_text(store.history_file) or "").splitlines():
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(event, dict):
            events.append(event)
    return events
