"""Assertions about a device store shared by the deploy tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np


def model_dir(device: Path, model: str = "tiny") -> Path:
    return device / model


def state(device: Path, model: str = "tiny") -> dict:
    return json.loads((model_dir(device, model) / "state.json").read_text())


def history(device: Path, model: str = "tiny") -> list[dict]:
    path = model_dir(device, model) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def linked(device: Path, model: str = "tiny") -> str | None:
    link = model_dir(device, model) / "current"
    return Path(os.readlink(link)).name if link.is_symlink() else None


def current_verifies(device: Path, model: str = "tiny") -> bool:
    """The active version's own native loader passes its golden vectors, as the device would run it."""
    loader = model_dir(device, model) / "current" / "runtime" / "edgepack-run"
    result = subprocess.run([str(loader), "verify"], capture_output=True, text=True, env={}, timeout=120, check=False)
    return result.returncode == 0


def leftovers(device: Path, model: str = "tiny") -> list[str]:
    root = model_dir(device, model)
    return sorted(p.name for place in (root, root / "versions") for p in place.iterdir() if p.name.startswith((".staging-", ".trash-", ".current-", ".state.json.")))


def tiny_onnx(path: Path, batch: int | str = 1) -> Path:
    """The deploy tests' tiny MatMul+Add model, x[batch, 4] -> y[batch, 3]; a string batch is a dynamic axis."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
