"""Where a target's tuning records live and how they are opened (MetaSchedule's JSON database).

Apart from edgepack.compiler.tune so that compiling (which applies records) does not import tuning."""

from __future__ import annotations

import os
from pathlib import Path

from edgepack.compiler.wheels import cache_dir
from edgepack.targets import TargetSpec

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


def tuning_dir(target: TargetSpec) -> Path:
    """The tuning database of a target: $EDGEPACK_TUNING_DIR/<name>, else <cache>/tuning/<name>."""
    root = os.environ.get("EDGEPACK_TUNING_DIR")
    return (Path(root) if root else cache_dir() / "tuning") / target.name


def open_database(path: Path):
    """The MetaSchedule JSON database in `path` (created empty when missing); usable as a context."""
    from tvm.s_tir import meta_schedule as ms

    path.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(
        path_workload=str(path / WORKLOAD_FILE),
        path_tuning_record=str(path / RECORD_FILE),
        allow_missing=True,
        module_equality="structural",
    )
