"""The public API: docs/api.md's example runs, and it makes the same bundle as the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.S)


def _without_timings(value):
    """The manifest minus what differs between any two runs: its creation time and stage durations."""
    if isinstance(value, dict):
        return {key: _without_timings(item) for key, item in value.items() if key not in ("created", "seconds")}
    if isinstance(value, list):
        return [_without_timings(item) for item in value]
    return value


def _comparable(bundle: Path) -> dict:
    return _without_timings(json.loads((bundle / "manifest.json").read_text()))


def test_import_edgepack_is_light_and_names_the_verbs():
    code = (
        "import sys, edgepack; assert not {'torch', 'tvm', 'onnx'} & set(sys.modules), sorted(sys.modules); "
        "assert callable(edgepack.build) and callable(edgepack.deploy) and callable(edgepack.load); "
        "assert {'build', 'quantize', 'prune', 'distill', 'tune', 'load', 'deploy'} <= set(edgepack.__all__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_docs_example_runs_and_the_cli_makes_the_identical_bundle(onnx_models, tmp_path, edgepack_cli):
    api_dir, cli_dir = tmp_path / "api", tmp_path / "cli"
    for directory in (api_dir, cli_dir):
        directory.mkdir()
        shutil.copyfile(onnx_models["mlp"], directory / "model.onnx")
    example = _blocks("python")[0]
    result = subprocess.run([sys.executable, "-c", example], cwd=api_dir, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "True"

    for line in _blocks("sh")[0].strip().splitlines():
        command = line.split()
        assert command[0] == "edgepack"
        done = edgepack_cli(*command[1:], cwd=cli_dir)
        assert done.returncode == 0, done.stderr

    [api_bundle] = (api_dir / "dist").iterdir()
    [cli_bundle] = (cli_dir / "dist").iterdir()
    assert api_bundle.name == cli_bundle.name
    assert _comparable(api_bundle) == _comparable(cli_bundle)  # files: {path: sha256, size} included
    assert (api_dir / "model.int8.onnx").read_bytes() == (cli_dir / "model.int8.onnx").read_bytes()
