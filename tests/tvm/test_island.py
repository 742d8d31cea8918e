"""The loaders run a copied bundle where edgepack, torch, onnx, onnxruntime and the TVM compiler cannot load.

The Python loader runs in a subprocess whose `sitecustomize.py` puts an import blocker first on
`sys.meta_path`; a wrapper runs the loader's `__main__` and then records `/proc/self/maps` and
`sys.modules`, so the test sees which shared libraries and modules the run really loaded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.tvm

BLOCKED = ("edgepack", "torch", "onnx", "onnxruntime", "onnxscript", "tvm.relax", "sklearn")

SITECUSTOMIZE = f"""\
import sys

BLOCKED = {BLOCKED!r}


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if any(name == blocked or name.startswith(blocked + ".") for blocked in BLOCKED):
            raise ImportError(f"{{name}} is blocked on this island")
        return None


sys.meta_path.insert(0, _Blocker())
"""

WRAPPER = """\
import json, runpy, sys

report, loader, args = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.argv = [loader, *args]
sys.path[0] = loader.rsplit("/", 1)[0]  # as if `python runtime/edgepack_loader.py` had been run
code = 0
try:
    runpy.run_path(loader, run_name="__main__")
except SystemExit as exc:
    code = exc.code
with open("/proc/self/maps") as maps:
    libraries = sorted({line.split()[-1] for line in maps if ".so" in line})
with open(report, "w") as handle:
    json.dump({"code": code, "libraries": libraries, "modules": sorted(sys.modules)}, handle)
sys.exit(code)
"""


@pytest.fixture()
def island(mlp_bundle, copy_bundle, tmp_path) -> dict:
    """A copy of the MLP bundle in a fresh directory, and a blocker directory for PYTHONPATH."""
    bundle = copy_bundle(mlp_bundle, tmp_path / "device")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(blocker), "TVM_USE_RUNTIME_LIB": "1", "HOME": str(tmp_path)}
    return {"bundle": bundle, "env": env, "wrapper": tmp_path / "wrapper.py", "report": tmp_path / "report.json"}


def python_on_island(island, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=island["bundle"], env=island["env"],
                          capture_output=True, text=True, timeout=120, check=False)


def loader_on_island(island, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = python_on_island(island, str(island["wrapper"]), str(island["report"]),
                              str(island["bundle"] / "runtime" / "edgepack_loader.py"), *args)
    assert island["report"].is_file(), result.stderr
    return result, json.loads(island["report"].read_text())


@pytest.mark.parametrize("module", ["edgepack", "edgepack.runtime.loader", "torch", "onnx", "onnxruntime", "tvm.relax"])
def test_the_blocker_really_blocks(island, module):
    """Guard against a test that cannot fail: on the island these imports raise."""
    result = python_on_island(island, "-c", f"import {module}")
    assert result.returncode == 1
    assert "ImportError" in result.stderr and "blocked on this island" in result.stderr


def test_runtime_only_tvm_imports_on_the_island(island):
    result = python_on_island(island, "-c", "import tvm, tvm.runtime.vm, numpy; print(tvm.base._RUNTIME_ONLY)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def assert_island(report: dict) -> None:
    libraries = " ".join(report["libraries"])
    assert "libtvm_runtime.so" in libraries, "the check must see the TVM runtime it loaded"
    assert "libtvm_compiler.so" not in libraries
    for prefix in BLOCKED:
        assert not [m for m in report["modules"] if m == prefix or m.startswith(prefix + ".")], prefix
    assert "tvm.runtime.vm" in report["modules"]


def test_python_loader_verifies_on_the_island(island):
    result, report = loader_on_island(island, "verify")
    assert result.returncode == 0 == report["code"], result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for index, line in enumerate(lines):
        assert re.fullmatch(rf"case {index}: max_abs_err=\S+ PASS", line), line
    assert_island(report)


def test_python_loader_runs_on_the_island(island, tmp_path):
    bundle = island["bundle"]
    x = np.load(bundle / "golden/1/input_0.npy")
    np.save(tmp_path / "x.npy", x)
    result, report = loader_on_island(island, "run", "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"))
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.load(bundle / "golden/1/output_0.npy"), atol=1e-4, rtol=1e-3)
    assert_island(report)


def test_python_loader_refuses_a_tampered_bundle_on_the_island(island):
    params = island["bundle"] / "params.bin"
    data = bytearray(params.read_bytes())
    data[-1] ^= 0x01
    params.write_bytes(bytes(data))
    result, report = loader_on_island(island, "verify")
    assert result.returncode == 3 == report["code"]
    assert result.stderr == "error: bundle file 'params.bin' does not match its SHA-256 in the manifest; " \
                            "the bundle was modified; copy it again or rebuild it\n"
    assert "libtvm_runtime.so" not in " ".join(report["libraries"]), "refused before the runtime was loaded"


def test_native_loader_verifies_with_an_empty_environment(island):
    bundle = island["bundle"]
    result = subprocess.run(["./runtime/edgepack-run", "verify"], cwd=bundle, env={},
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("verify: 3 of 3 outputs passed")
    assert sum(" PASS" in line for line in lines) == 3
    assert not [line for line in lines if "FAIL" in line]
