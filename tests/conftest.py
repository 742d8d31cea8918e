"""Shared fixtures: tiny models exported once, bundles built once per session and copied per test.

Builds are session-scoped and read-only for tests: a test that modifies a bundle works on a copy
(`copy_bundle`). Nothing here fakes TVM, ONNX Runtime or torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # `import models` from every test directory
    sys.path.insert(0, str(TESTS_DIR))

EDGEPACK = Path(sys.executable).parent / "edgepack"  # the console script of this environment
# progress lines off in every command the tests start: a refusal's stderr is then its one error line
# (tests/tvm/test_pipeline.py turns them on to check them)
os.environ["EDGEPACK_PROGRESS"] = "none"


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory) -> dict[str, Path]:
    """The three tiny models exported by the tests themselves (torch.onnx dynamo), keyed by factory name."""
    from models import FACTORIES, export_onnx

    directory = tmp_path_factory.mktemp("onnx")
    return {name: export_onnx(factory(), directory / f"{name}.onnx") for name, factory in FACTORIES.items()}


@pytest.fixture(scope="session")
def factory_specs(tmp_path_factory) -> dict[str, str]:
    """`file.py:factory` MODEL arguments for the three tiny models, files written to a temp dir."""
    from models import FACTORIES, write_factory_file

    directory = tmp_path_factory.mktemp("factories")
    return {name: f"{write_factory_file(directory / f'{name}_model.py', name)}:{name}" for name in FACTORIES}


def _build(model: str, out_dir: Path):
    from edgepack.build import build

    return build(model, "x86_64", out_dir)


@pytest.fixture(scope="session")
def mlp_build(onnx_models, tmp_path_factory):
    """The MLP built from an ONNX file (BuildResult)."""
    return _build(str(onnx_models["mlp"]), tmp_path_factory.mktemp("dist-mlp"))


@pytest.fixture(scope="session")
def cnn_build(factory_specs, tmp_path_factory):
    """The CNN (BatchNorm + residual add) built from `file.py:small_cnn` (BuildResult)."""
    return _build(factory_specs["small_cnn"], tmp_path_factory.mktemp("dist-cnn"))


@pytest.fixture(scope="session")
def two_build(factory_specs, tmp_path_factory):
    """The two-input, two-output model built from `file.py:two_in_two_out` (BuildResult)."""
    return _build(factory_specs["two_in_two_out"], tmp_path_factory.mktemp("dist-two"))


@pytest.fixture(scope="session")
def mlp_bundle(mlp_build) -> Path:
    return mlp_build.bundle.path


def _copy(bundle: Path, destination_dir: Path) -> Path:
    destination = Path(destination_dir) / bundle.name
    shutil.copytree(bundle, destination, symlinks=True)
    return destination


@pytest.fixture()
def copy_bundle(tmp_path):
    """`copy_bundle(bundle, into=None)`: a private copy of a session bundle, safe to modify."""
    def copy(bundle: Path, into: Path | None = None) -> Path:
        return _copy(bundle, into or tmp_path)
    return copy


@pytest.fixture(scope="session")
def edgepack_cli():
    """`edgepack_cli(*args, cwd=...)`: run the installed console script in a subprocess."""
    assert EDGEPACK.is_file(), f"console script not found at {EDGEPACK}"

    def run(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(EDGEPACK), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                              timeout=timeout, check=False)
    return run
