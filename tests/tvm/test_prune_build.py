"""Real builds with pruning: channel-pruned digits CNN, and an ONNX model whose magnitude-pruned weights
ship as params.sparse and load through both loaders."""

from __future__ import annotations

import hashlib
import json
import subprocess

import numpy as np
import pytest

pytestmark = pytest.mark.tvm


def test_channel_pruned_digits_bundle(tmp_path):
    import onnx
    import torch

    from edgepack.build import EvaluationConfig, build
    from edgepack.examples import digits
    from edgepack.compression.prune import ChannelPrune, FineTune

    torch.set_num_threads(1)
    (tmp_path / "train.py").write_text("from edgepack.examples.digits import digits_split\n\ndef train():\n"
                                       "    x, _, y, _ = digits_split()\n    return x, y\n")
    eval_data = digits.write_eval_data(tmp_path / "eval.npz")
    config = ChannelPrune(sparsity=0.5, finetune=FineTune(f"{tmp_path / 'train.py'}:train", epochs=2, lr=3e-3), eval=eval_data)
    result = build(f"{digits.__file__}:digits_cnn", "x86_64", tmp_path / "dist", torch_passes=(config,),
                   evaluation=EvaluationConfig(eval_data, max_drop=0.01))
    manifest = result.bundle.manifest
    stages = [stage["stage"] for stage in manifest["provenance"]["stages"]]
    assert stages[:2] == ["prune", "export"]
    prune = manifest["provenance"]["stages"][0]
    assert prune["config"]["granularity"] == "channels" and prune["report"]["quality"]["drop"] <= 0.03
    assert prune["report"]["after"]["macs"] < 0.5 * prune["report"]["before"]["macs"]
    weights = {init.name: tuple(init.dims) for init in onnx.load(str(result.bundle.path / "reference/model.onnx")).graph.initializer}
    assert (8, 8, 3, 3) in weights.values() and (10, 128) in weights.values()  # half the filters, a narrower head
    compile_report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert compile_report["params_bytes"] < 0.5 * 4 * prune["report"]["before"]["params"]
    assert manifest["verification"]["passed"] and manifest["verification"]["native_loader"]["passed"]
    assert manifest["quality"]["passed"]


@pytest.fixture(scope="module")
def sparse_bundle(tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgepack.build import build
    from edgepack.compression.prune import OnnxWeightPrune

    folder = tmp_path_factory.mktemp("sparse")
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(128, 96)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(96, 10)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "mlp.onnx"))
    return build(str(folder / "mlp.onnx"), "x86_64", folder / "dist", onnx_passes=(OnnxWeightPrune(sparsity=0.8),)).bundle


def test_sparse_params_bundle_verifies_in_both_loaders(sparse_bundle):
    manifest = sparse_bundle.manifest
    params = manifest["params"]
    assert params["file"] == "params.sparse" and params["encoding"] == "sparse-words-v1"
    assert not (sparse_bundle.path / "params.bin").exists()
    sparse_bytes = manifest["files"]["params.sparse"]["size"]
    assert sparse_bytes < 0.35 * params["dense_bytes"]  # 80% zeros: values + 1 bit per word
    assert manifest["verification"]["passed"] and manifest["verification"]["native_loader"]["passed"]
    run = subprocess.run([str(sparse_bundle.path / "runtime/edgepack-run"), "verify"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr


def test_damaged_sparse_params_fail_the_decoders_digest_check(sparse_bundle, tmp_path):
    import shutil

    from edgepack.errors import IntegrityError
    from edgepack.runtime.loader import load

    copy = tmp_path / "bundle"
    shutil.copytree(sparse_bundle.path, copy, symlinks=True)
    data = bytearray((copy / "params.sparse").read_bytes())
    data[-8] ^= 0x40  # one nonzero weight; the file digest is updated so only the decoder's check can catch it
    (copy / "params.sparse").write_bytes(bytes(data))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["params.sparse"]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(IntegrityError, match="SHA-256"):
        load(copy)
    run = subprocess.run([str(copy / "runtime/edgepack-run"), "verify"], capture_output=True, text=True, check=False)
    assert run.returncode == 3 and "params.sparse': decoded params do not match their SHA-256" in run.stderr, run.stderr


def test_build_prune_reports_params_size_and_compiled_latency_before_and_after(tmp_path):
    """`edgepack build --prune` (a real subprocess): the report shows what pruning bought, timed as `bench` times."""
    import sys
    from pathlib import Path

    from edgepack.examples import digits

    edgepack = Path(sys.executable).parent / "edgepack"
    built = subprocess.run([str(edgepack), "build", f"{digits.__file__}:digits_cnn", "--prune", "channels",
                            "--prune-sparsity", "50%", "-o", str(tmp_path / "dist"), "--name", "pruned"],
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-2000:]
    for metric in ("params_bytes", "median_ms"):
        assert metric in built.stdout
    (bundle,) = (tmp_path / "dist").iterdir()
    manifest = json.loads((bundle / "manifest.json").read_text())
    report = manifest["provenance"]["stages"][0]["report"]
    before, after = report["before"], report["after"]
    assert after["params_bytes"] < 0.6 * before["params_bytes"]
    assert before["median_ms"] > 0 and after["median_ms"] > 0 and before["runs"] == after["runs"] == 100
    assert before["protocol"].startswith("as `edgepack bench`: 10 warm-up calls, 5 rounds of 20")
    compile_report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert compile_report["params_bytes"] == after["params_bytes"]  # the bundle ships what was measured
