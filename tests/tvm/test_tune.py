"""Tuning: a tiny model tuned with a handful of trials; a later build in a fresh process applies the records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tvm

EDGEPACK = Path(sys.executable).parent / "edgepack"


def _tiny_onnx(path: Path) -> Path:
    """x(1x32) @ W(32x16) + b, ReLU: one kernel to tune, written with onnx.helper (no export needed)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "weight")
    bias = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["h"]), helper.make_node("Add", ["h", "bias"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [weight, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _kernels(manifest: dict) -> dict:
    compile_stage = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")
    return compile_stage["report"]["kernels"]


def test_tuning_directory_follows_environment(tmp_path, monkeypatch):
    from edgepack.targets import load_target
    from edgepack.compiler.tune import tuning_dir

    monkeypatch.setenv("EDGEPACK_TUNING_DIR", str(tmp_path / "shared"))
    assert tuning_dir(load_target("x86_64")) == tmp_path / "shared" / "x86_64"
    monkeypatch.delenv("EDGEPACK_TUNING_DIR")
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    assert tuning_dir(load_target("x86_64")) == tmp_path / "cache" / "tuning" / "x86_64"


def test_tune_then_fresh_build_applies_records(tmp_path):
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    env = {**os.environ, "EDGEPACK_TUNING_DIR": str(tmp_path / "tuning")}
    tuned = subprocess.run([str(EDGEPACK), "tune", str(model), "--trials", "2", "--json"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    report = json.loads(tuned.stdout)["report"]  # with --json, stdout is the JSON document and nothing else
    assert report["kernels"] >= 1 and report["trials"] >= 1 and report["failed_trials"] == 0
    assert report["heuristic_records"] >= 1  # the untuned schedule is a record: tuning never makes it worse
    assert report["curve"] and report["curve"][-1][0] == report["trials"]  # best latency after each batch
    from plot_helpers import keep_picture
    from edgepack.measure.plots import tuning_curve

    keep_picture(tuning_curve(report["curve"], tmp_path / "tuning-curve.png", title="tiny model: 2 trials"))
    database = tmp_path / "tuning" / "x86_64"
    assert (database / "database_tuning_record.json").stat().st_size > 0

    built = subprocess.run([str(EDGEPACK), "build", str(model), "-o", str(tmp_path / "dist"), "--json"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    kernels = _kernels(json.loads(built.stdout[built.stdout.index("{"):]))
    assert kernels["tuned"] >= 1 and kernels["heuristic"] == 0 and not kernels["unscheduled"]


def test_untuned_build_uses_heuristic_schedules(tmp_path):
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    env = {**os.environ, "EDGEPACK_TUNING_DIR": str(tmp_path / "empty")}
    built = subprocess.run([str(EDGEPACK), "build", str(model), "-o", str(tmp_path / "dist"), "--json"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    kernels = _kernels(json.loads(built.stdout[built.stdout.index("{"):]))
    assert kernels["heuristic"] >= 1 and kernels["tuned"] == 0 and not kernels["unscheduled"]


def _relu6_factory(tmp_path: Path) -> Path:
    factory = tmp_path / "relu6.py"
    factory.write_text(
        "import torch\n"
        "def net():\n"
        "    torch.manual_seed(0)\n"
        "    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6()).eval()\n"
        "    model.example_inputs = (torch.zeros(1, 3, 8, 8),)\n"
        "    return model\n")
    return factory


def test_conv_relu6_kernels_are_tuned(tmp_path):
    """ReLU6's bounds are embedded as constants, so its NaN handling folds away and the kernel can be searched."""
    env = {**os.environ, "EDGEPACK_TUNING_DIR": str(tmp_path / "tuning")}
    tuned = subprocess.run([str(EDGEPACK), "tune", f"{_relu6_factory(tmp_path)}:net", "--trials", "2", "--json"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    report = json.loads(tuned.stdout[tuned.stdout.index("{"):])["report"]
    assert report["kernels"] >= 1 and not report["skipped"] and report["trials"] >= 1


def test_kernels_metaschedule_cannot_search_are_skipped_not_fatal(tmp_path):
    """With the bounds kept as runtime params (as before), TVM's default rules raise on the Conv + ReLU6
    kernel (scalar `where` blocks); `_searchable` sets it aside with TVM's reason instead of ending the run."""
    import onnx
    import torch
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.s_tir import meta_schedule as ms

    from edgepack.compiler.compile import lower_to_tir
    from edgepack.targets import load_target
    from edgepack.compiler.tune import _searchable, _skip_tensor_intrinsics, tuning_target

    _skip_tensor_intrinsics()  # as tune_model does: importing TVM's tensor intrinsics takes ~90 s here
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6()).eval()
    path = tmp_path / "relu6.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 8, 8),), str(path), input_names=["x"], dynamo=True)
    module = from_onnx(onnx.load(str(path)), shape_dict={"x": [1, 3, 8, 8]}, keep_params_in_input=True)
    module, _ = relax.frontend.detach_params(module)
    target = tuning_target(load_target("x86_64"))
    tasks = ms.relax_integration.extract_tasks(lower_to_tir(module, target), target)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, str(tmp_path / "work"), num_threads=1)
    kept, _, skipped = _searchable(contexts, weights)
    assert any("reverse-compute-at" in why for why in skipped.values()), skipped
    assert len(kept) + len(skipped) == len(contexts)


def test_time_budget_stops_tuning_and_keeps_records(tmp_path):
    """--minutes ends tuning after the batch that spends it; the batches measured so far are in the database.
    With stderr a pipe (as in CI), progress is one plain line per stage."""
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    env = {**os.environ, "EDGEPACK_TUNING_DIR": str(tmp_path / "tuning"), "EDGEPACK_PROGRESS": "auto"}
    tuned = subprocess.run([str(EDGEPACK), "tune", str(model), "--trials", "10000", "--minutes", "0.001", "--json"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    record = json.loads(tuned.stdout)  # stdout holds the JSON document only; MetaSchedule's logs went to stderr
    report = record["report"]
    assert report["stopped_by_time_budget"] is True and record["config"]["max_minutes"] == 0.001
    assert 1 <= report["trials"] < 10000 and report["new_records"] >= 1
    lines = [line for line in tuned.stderr.splitlines() if line.startswith("tune: ")]
    assert [line.split(" done in ")[0] for line in lines if " done in " in line] == ["tune: prepare", "tune: tuning"], lines
    assert lines[-1].startswith("tune: finished in ")


def test_non_positive_time_budget_is_refused(tmp_path):
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    refused = subprocess.run([str(EDGEPACK), "tune", str(model), "--minutes", "0"], capture_output=True, text=True,
                             timeout=600, env={**os.environ, "EDGEPACK_TUNING_DIR": str(tmp_path / "tuning")})
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "--minutes must be more than 0" in refused.stderr


def test_ctrl_c_during_tuning_exits_130_with_one_line_and_keeps_records(tmp_path):
    """SIGINT to the process group (as a terminal sends it) once records are being written: no crash."""
    import signal
    import time

    model = _tiny_onnx(tmp_path / "tiny.onnx")
    database = tmp_path / "db"
    records = database / "database_tuning_record.json"
    process = subprocess.Popen([str(EDGEPACK), "tune", str(model), "--trials", "10000", "--database", str(database)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and process.poll() is None:
            if records.is_file() and len(records.read_text().splitlines()) >= 3:  # past the heuristic seeds: searching
                break
            time.sleep(0.5)
        assert process.poll() is None, process.stderr.read()[-2000:]
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr[-3000:]
    assert "Segfault" not in stderr and "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: kept ") and str(database) in last, stderr[-2000:]
    kept = int(last.split("kept ")[1].split()[0])
    assert kept >= 1 and len(records.read_text().splitlines()) >= kept
