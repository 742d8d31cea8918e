"""No pickle on the deployment path: what a device reads is raw binary, JSON or .npy without pickles.

Scans the runtime package (both loaders), the bundle-writing code and the device-side deploy code:
no pickle-family imports or `torch.load`, and every `np.load` passes `allow_pickle=False` literally.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from edgepack.errors import BundleError
from edgepack.runtime.bundle_format import load_npy

PACKAGE = Path(__file__).resolve().parents[2] / "edgepack"
DEPLOYMENT_PATH = sorted(
    [*(PACKAGE / "runtime").glob("*.py"), *(PACKAGE / "deploy").glob("*.py"), *(PACKAGE / "bundle").glob("*.py"),
     *(PACKAGE / name for name in ("compiler/runtime_files.py", "native/__init__.py"))])
PICKLERS = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal", "jsonpickle"}


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"imports {a.name}" for a in node.names if a.name.split(".")[0] in PICKLERS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLERS:
            found.append(f"imports from {node.module}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            if node.func.attr == "load" and owner in ("np", "numpy"):
                flag = next((k.value for k in node.keywords if k.arg == "allow_pickle"), None)
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    found.append(f"line {node.lineno}: {ast.unparse(node)} without allow_pickle=False")
            if node.func.attr in ("load", "loads") and owner in ("torch", *PICKLERS):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_sees_the_files_and_catches_a_pickle(tmp_path):
    assert PACKAGE / "runtime" / "loader.py" in DEPLOYMENT_PATH and len(DEPLOYMENT_PATH) > 10
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport numpy as np\nnp.load('x.npy')\nnp.load('y', allow_pickle=True)\n")
    assert len(_problems(bad)) == 3


@pytest.mark.parametrize("path", DEPLOYMENT_PATH, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_pickle_on_the_deployment_path(path):
    assert _problems(path) == []


def test_native_loader_reads_only_plain_npy_dtypes():
    source = (PACKAGE / "native" / "loader.cc").read_text(encoding="utf-8")
    assert "pickle" not in source.lower()
    assert "'|O'" not in source and "\"|O\"" not in source  # object arrays (pickles) have no descr in kDtypes


def test_a_pickled_npy_is_refused(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match="not a readable .npy"):
        load_npy(path)
