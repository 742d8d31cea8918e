"""CLI conventions: one-line usage errors (exit 2), --version, `python -m edgepack`, the device group and its
aliases, --json on the reporting commands, third-party warnings hidden, and advice that names real options."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack import __version__

pytestmark = pytest.mark.cli
ROOT = Path(__file__).resolve().parents[2]


def _usage_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args, problem",
    [
        (
            ["build", "m.onnx", "--no-such-option"],
            "error: no such option: --no-such-option; see `edgepack build --help`",
        ),
        (["build"], "error: missing argument 'model'; see `edgepack build --help`"),
        (["build", "m.onnx", "--cases", "many"], "error: invalid value for '--cases'"),
        (["no-such-command"], "error: no such command 'no-such-command'"),
        (["device", "status"], "error: missing argument"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(edgepack_cli, args, problem):
    assert _usage_line(edgepack_cli(*args)).startswith(problem)


def test_version_and_python_dash_m(edgepack_cli):
    assert edgepack_cli("--version").stdout.strip() == f"edgepack {__version__}"
    result = subprocess.run(
        [sys.executable, "-m", "edgepack", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == f"edgepack {__version__}"


def test_device_commands_are_grouped_and_the_old_names_still_work(edgepack_cli, tmp_path):
    grouped = edgepack_cli("device", "--help").stdout
    assert all(name in grouped for name in ("deploy", "status", "versions", "rollback", "remove"))
    top = edgepack_cli("--help").stdout
    assert "device" in top and not re.search(r"^│ status ", top, flags=re.M)  # aliases are hidden from the main screen
    for command in (["device", "status"], ["status"]):
        result = edgepack_cli(*command, tmp_path / "missing-store")
        assert result.returncode == 1 and result.stderr.startswith("error: device store"), result.stderr


def test_targets_and_doctor_json(edgepack_cli):
    targets = json.loads(edgepack_cli("targets", "--json").stdout)
    assert {"x86_64", "arm64"} <= {target["name"] for target in targets}
    doctor = json.loads(edgepack_cli("doctor", "--json").stdout)
    assert {row["target"] for row in doctor} == {target["name"] for target in targets}


def test_verify_and_run_json(two_build, tmp_path, edgepack_cli):
    import numpy as np

    bundle = two_build.bundle.path
    report = json.loads(edgepack_cli("verify", bundle, "--json").stdout)
    assert report["passed"] is True
    inputs = []
    for index, spec in enumerate(two_build.bundle.manifest["inputs"]):
        inputs += ["--input", str(tmp_path / f"in{index}.npy")]
        np.save(tmp_path / f"in{index}.npy", np.zeros(spec["shape"], spec["dtype"]))
    result = edgepack_cli("run", bundle, *inputs, "--output-dir", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    assert [output["shape"] for output in outputs] == [spec["shape"] for spec in two_build.bundle.manifest["outputs"]]


def test_pytorch_path_shows_no_third_party_warnings(factory_specs, tmp_path, edgepack_cli):
    result = edgepack_cli("quantize", factory_specs["mlp"], "-o", tmp_path / "q.onnx", "--mode", "int8-dynamic")
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "W1" not in result.stderr, result.stderr


def _option_names() -> set[str]:
    import typer.main

    from edgepack.cli.app import app

    names, stack = set(), [typer.main.get_command(app)]
    while stack:
        command = stack.pop()
        names.update(opt for param in command.params for opt in (*param.opts, *param.secondary_opts))
        stack.extend(getattr(command, "commands", {}).values())
    return names


def _device_options() -> set[str]:
    """Options of the device-side programs shipped in bundles (runtime/: the loader and the HTTP server, argparse)."""
    names = set()
    for path in (ROOT / "edgepack" / "runtime").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                names.update(
                    arg.value for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value).startswith("--")
                )
    return names


def _advised_options() -> dict[str, str]:
    """`--option` names inside the arguments of every `...Error(...)` raised in edgepack, with where they are;
    commands of other programs quoted in backticks (`python -m tvm.exec.rpc_server --key KEY`) are not ours."""
    found = {}
    for path in (ROOT / "edgepack").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = getattr(node, "func", None)
            name = getattr(name, "id", getattr(name, "attr", ""))
            if isinstance(node, ast.Call) and name.endswith("Error"):
                for text in (
                    n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                ):
                    text = re.sub(r"`(?!edgepack)[^`]*`", "", text)
                    for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text):
                        found.setdefault(option, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_option_named_in_an_error_message_exists():
    advised = _advised_options()
    assert "--export-atol" in advised and len(advised) > 20  # the scan sees the messages
    options = _option_names() | _device_options()
    missing = {option: where for option, where in advised.items() if option not in options}
    assert missing == {}, f"error messages advise options no command has: {missing}"
