"""Pruning without TVM builds: criteria, structured and unstructured pruning on the digits CNN and the
small ResNet, fine-tuning, the quality gate, ONNX magnitude pruning and the sparse params encoding."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgepack.errors import EdgepackError, IntegrityError, VerificationError  # noqa: E402
from edgepack.frontends.export import TorchModel  # noqa: E402
from edgepack.compression.passes import PassContext  # noqa: E402
from edgepack.compression.prune import ChannelPrune, FineTune, Magnitude, OnnxWeightPrune, Taylor, WeightPrune, parse_sparsity  # noqa: E402
from edgepack.bundle import sparse_params  # noqa: E402
from edgepack.runtime import bundle_format  # noqa: E402
from edgepack.runtime.bundle_format import TensorSpec  # noqa: E402
from edgepack.targets import load_target  # noqa: E402

DIGITS_INPUT = (TensorSpec("image", "float32", (1, 1, 8, 8)),)
TRAIN_PY = "from edgepack.examples.digits import digits_split\n\ndef train():\n    x, _, y, _ = digits_split()\n    return x, y\n"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The trained digits CNN (once per module), its eval data and a --train file."""
    from edgepack.examples.digits import digits_cnn, write_eval_data

    torch.set_num_threads(1)  # the shared 2-core machine: more threads only contend
    folder = tmp_path_factory.mktemp("prune-digits")
    (folder / "train.py").write_text(TRAIN_PY)
    return {"model": digits_cnn(), "eval": write_eval_data(folder / "eval.npz"), "train": f"{folder / 'train.py'}:train",
            "dir": folder}


def run_pass(config, module, inputs=DIGITS_INPUT, tmp_path=None):
    module = copy.deepcopy(module)
    context = PassContext(Path(tmp_path or "/tmp"), load_target("x86_64"))
    return config.run(TorchModel(module, module, inputs, None), context)


@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
def test_half_the_channels_of_the_digits_cnn_with_fine_tuning_keep_accuracy(digits, criterion, tmp_path):
    chosen = Magnitude() if criterion == "magnitude" else Taylor(calib=digits["eval"])
    config = ChannelPrune(sparsity=0.5, criterion=chosen, finetune=FineTune(digits["train"], epochs=3, lr=3e-3), eval=digits["eval"])
    pruned, record = run_pass(config, digits["model"], tmp_path=tmp_path)
    report = record.report
    module = pruned.module
    assert module.stem[0].out_channels == module.block[0].out_channels == 8  # the residual add pruned alike
    assert module.stem[1].num_features == module.block[1].num_features == module.block[0].in_channels == 8
    assert module.head.in_features == 8 * 16 and module.head.out_features == 10  # flatten: channels × 4×4
    assert report["after"]["params"] < 0.5 * report["before"]["params"]
    assert report["after"]["macs"] < 0.5 * report["before"]["macs"]
    layers = {row["layer"]: row for row in report["layers"]}
    assert (layers["block.0"]["out_before"], layers["block.0"]["out_after"]) == (16, 8)
    assert report["groups"]["head"]["skipped"] == "produces the model's output"
    quality = report["quality"]
    assert quality["metric"] == "accuracy" and quality["before"]["accuracy"] > 0.95
    assert quality["drop"] <= 0.015, quality  # within 1.5 points of the unpruned model
    with torch.no_grad():
        assert module(torch.zeros(4, 1, 8, 8)).shape == (4, 10)


def test_taylor_and_magnitude_rank_channels_differently(digits):
    from edgepack.compression.prune.criteria import element_scores
    from edgepack.compression.prune.data import calibration_batches

    batches, labelled = calibration_batches(digits["eval"], DIGITS_INPUT, 64, 4)
    module = digits["model"]
    magnitude = element_scores(Magnitude(), module, [], False)[module.block[0]]
    taylor = element_scores(Taylor(), module, batches, labelled)[module.block[0]]
    assert labelled and taylor.shape == magnitude.shape and float(taylor.sum()) > 0
    order = lambda score: score.flatten(1).sum(1).argsort().tolist()  # noqa: E731
    assert order(taylor) != order(magnitude)
    assert all(p.grad is None for p in module.parameters())  # scoring leaves no gradients behind


def test_taylor_without_labels_uses_the_models_own_predictions(digits, tmp_path):
    images = np.load(digits["eval"])["image"][:64]
    np.savez(tmp_path / "unlabelled.npz", image=images)
    _, record = run_pass(ChannelPrune(sparsity=0.25, criterion=Taylor(calib=tmp_path / "unlabelled.npz")), digits["model"])
    assert any("own predictions" in note for note in record.report["notes"])
    with pytest.raises(EdgepackError, match="needs data"):
        run_pass(ChannelPrune(sparsity=0.25, criterion=Taylor()), digits["model"])


def test_resnet_channels_pruned_consistently_across_residual_blocks(tmp_path):
    from edgepack.examples.resnet import resnet_small

    model = resnet_small()
    inputs = (TensorSpec("image", "float32", (1, 3, 64, 64)),)
    np.savez(tmp_path / "calib.npz", image=np.random.default_rng(0).normal(size=(8, 3, 64, 64)).astype(np.float32))
    pruned, record = run_pass(ChannelPrune(sparsity=0.5, criterion=Taylor(calib=tmp_path / "calib.npz", batch_size=4)), model, inputs)
    module = pruned.module
    for block in module.stages:  # every add: conv2's output, the shortcut's output and the block's input agree
        assert block.conv2.out_channels == block.bn2.num_features
        shortcut_out = block.shortcut[0].out_channels if isinstance(block.shortcut, torch.nn.Sequential) else block.conv1.in_channels
        assert block.conv2.out_channels == shortcut_out
        assert block.conv1.out_channels == block.bn1.num_features == block.conv2.in_channels
    assert module.fc.in_features == module.stages[-1].conv2.out_channels and module.fc.out_features == 10
    assert module.stages[0].conv1.out_channels == 8  # 16 → 8
    report = record.report
    assert report["after"]["macs"] < 0.4 * report["before"]["macs"]
    with torch.no_grad():
        assert module(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


def test_unstructured_global_sparsity_is_permanent(digits, tmp_path):
    pruned, record = run_pass(WeightPrune(sparsity=0.7, scope="global", eval=digits["eval"]), digits["model"])
    module = pruned.module
    weights = [layer.weight for layer in (module.stem[0], module.block[0], module.head)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.7, abs=0.01)
    assert not any(name.endswith(("_orig", "_mask")) for name, _ in module.named_parameters())  # prune.remove ran
    assert not any(name.endswith("_mask") for name, _ in module.named_buffers())
    assert record.report["after"]["params"] == record.report["before"]["params"]
    assert record.report["after"]["nonzero_params"] < 0.5 * record.report["before"]["nonzero_params"]
    assert {row["layer"] for row in record.report["layers"]} == {"stem.0", "block.0", "head"}


def test_per_layer_sparsity_and_threshold(digits):
    pruned, record = run_pass(WeightPrune(sparsity=0.5), digits["model"])
    assert all(row["sparsity"] == pytest.approx(0.5, abs=0.01) for row in record.report["layers"])
    pruned, record = run_pass(WeightPrune(sparsity=None, threshold=0.05), digits["model"])
    for layer in (pruned.module.stem[0], pruned.module.head):
        kept = layer.weight[layer.weight != 0]
        assert float(kept.detach().abs().min()) > 0.05
        assert torch.equal(layer.weight[layer.weight != 0], kept)
    original = digits["model"].head.weight
    assert int((original.abs() <= 0.05).sum()) == int((pruned.module.head.weight == 0).sum())


def test_max_drop_gate_refuses_a_model_that_lost_too_much(digits):
    with pytest.raises(VerificationError, match="pruning loses too much"):
        run_pass(ChannelPrune(sparsity=0.9, eval=digits["eval"], max_drop=0.01), digits["model"])


def test_config_checks():
    assert parse_sparsity("50%") == 0.5 and parse_sparsity("0.25") == 0.25
    for bad in ("150%", "x", "0"):
        with pytest.raises(EdgepackError):
            parse_sparsity(bad)
    with pytest.raises(EdgepackError, match="exactly one"):
        ChannelPrune(sparsity=0.5, threshold=0.1)
    with pytest.raises(EdgepackError, match="scope"):
        WeightPrune(scope="model")


def _gemm_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(64, 32)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(size=(32,)).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])], [weight, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_magnitude_pruning_of_initializers(tmp_path):
    import onnx
    from onnx import numpy_helper

    from edgepack.frontends.preflight import preflight

    model, _ = preflight(_gemm_onnx(tmp_path / "gemm.onnx"), {}, tmp_path)
    np.savez(tmp_path / "eval.npz", x=np.random.default_rng(1).normal(size=(20, 64)).astype(np.float32))
    (tmp_path / "pass").mkdir()
    pruned, record = OnnxWeightPrune(sparsity=0.75, eval=tmp_path / "eval.npz").run(model, PassContext(tmp_path / "pass", load_target("x86_64")))
    initializers = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(pruned.path)).graph.initializer}
    assert np.mean(initializers["w"] == 0) == pytest.approx(0.75, abs=0.01)
    assert np.count_nonzero(initializers["b"]) == 32  # biases (below min_elements or not weights) untouched
    assert record.report["layers"][0]["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert record.report["quality"]["metric"] == "top1_agreement"


def test_sparse_params_round_trip_in_both_decoders():
    rng = np.random.default_rng(0)
    values = rng.normal(size=1001).astype(np.float32)
    values[rng.random(1001) < 0.8] = 0
    dense = b"head" + values.tobytes() + b"xyz"  # not a multiple of 4 bytes
    encoded = sparse_params.encode(dense)
    assert len(encoded) < 0.4 * len(dense)
    assert sparse_params.decode(encoded) == dense
    assert bundle_format.decode_params(encoded, {"encoding": sparse_params.ENCODING}) == dense  # the island's own decoder
    assert bundle_format.decode_params(dense, {}) == dense
    header = encoded[:56]
    assert header[:8] == b"EPSPARSE" and int.from_bytes(header[16:24], "little") == len(dense)
    assert header[24:56] == hashlib.sha256(dense).digest()
    damaged = bytearray(encoded)
    damaged[-8] ^= 1  # a nonzero weight (the last word holds padding)
    for decode in (sparse_params.decode, lambda data: bundle_format.decode_params(data, {"encoding": sparse_params.ENCODING})):
        with pytest.raises(IntegrityError, match="SHA-256"):
            decode(bytes(damaged))
        with pytest.raises(IntegrityError, match="truncated"):
            decode(encoded[:-4])
    with pytest.raises(IntegrityError, match="unknown"):
        bundle_format.decode_params(encoded, {"encoding": "zstd"})


def test_sparse_params_only_when_meaningfully_smaller(tmp_path):
    dense = np.arange(1, 1001, dtype=np.float32).tobytes()
    path, fields = sparse_params.write_params(tmp_path, dense)
    assert path.name == "params.bin" and fields == {} and path.read_bytes() == dense
    sparse = np.where(np.arange(1000) % 2 == 0, 0, 1).astype(np.float32).tobytes()
    path, fields = sparse_params.write_params(tmp_path, sparse)
    assert path.name == "params.sparse" and fields == {"encoding": "sparse-words-v1", "dense_bytes": 4000}
    assert sparse_params.manifest_fields(path) == fields


def test_a_schema_1_loader_without_sparse_support_fails_loudly():
    """An older loader hands params.sparse straight to TVM's LoadParams, which refuses it (not a silent misread)."""
    tvm = pytest.importorskip("tvm")
    dense = tvm.runtime.save_param_dict({"w": tvm.runtime.tensor(np.zeros(256, dtype=np.float32))})
    with pytest.raises(Exception, match="Invalid parameters file format"):
        tvm.runtime.load_param_dict(sparse_params.encode(dense))


def test_cli_refuses_bad_prune_options(tmp_path):
    from typer.testing import CliRunner

    from edgepack.cli.app import app

    runner = CliRunner()
    onnx_path = _gemm_onnx(tmp_path / "gemm.onnx")
    cases = [
        (["prune", str(onnx_path), "-o", str(tmp_path / "p.onnx")], "can only be pruned by weight magnitude"),
        (["prune", str(onnx_path), "-o", str(tmp_path / "p.txt"), "-g", "weights"], "must end in .onnx or .pt2"),
        (["prune", "edgepack/examples/digits.py:digits_cnn", "-o", str(tmp_path / "p.onnx"), "--train", "nope"], "is not file.py:function"),
        (["prune", "edgepack/examples/digits.py:digits_cnn", "-o", str(tmp_path / "p.onnx"), "--max-drop", "1%"], "--max-drop needs --eval"),
        (["build", str(onnx_path), "-o", str(tmp_path), "--prune", "channels"], "can only be pruned by weight magnitude"),
        (["build", "edgepack/examples/digits.py:digits_cnn", "-o", str(tmp_path), "--train", "x.py:f"], "--train fine-tunes after pruning"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in str(result.exception), (args, result.exception)


def test_pruned_weights_are_positive_zeros(digits):
    """weight_orig * mask leaves -0.0 for negative weights; the sparse params encoding drops only all-zero words."""
    pruned, _ = run_pass(WeightPrune(sparsity=0.8), digits["model"])
    weight = pruned.module.block[0].weight.detach().numpy()
    assert np.mean(weight.view(np.uint32) == 0) == pytest.approx(0.8, abs=0.01)


def test_build_plan_prunes_before_quantizing(tmp_path):
    """torch pruning runs before export, ONNX magnitude pruning before the quantize pass."""
    from typer.testing import CliRunner

    from edgepack.cli.app import app

    runner = CliRunner()
    torch_plan = runner.invoke(app, ["build", "edgepack/examples/digits.py:digits_cnn", "-o", str(tmp_path), "--prune", "channels",
                                     "--quantize", "int8-dynamic", "--dry-run"])
    assert torch_plan.exit_code == 0, torch_plan.output
    assert "stages:  prune → export → preflight → quantize → compile" in torch_plan.output
    onnx_plan = runner.invoke(app, ["build", str(_gemm_onnx(tmp_path / "gemm.onnx")), "-o", str(tmp_path), "--prune", "weights",
                                    "--quantize", "int8-dynamic", "--dry-run"])
    assert onnx_plan.exit_code == 0, onnx_plan.output
    assert "stages:  preflight → prune → quantize → compile" in onnx_plan.output
