"""Magnitude pruning of an ONNX model's weight initializers (models without PyTorch source or gradients)."""

from __future__ import annotations

import numpy as np

from edgepack.artifacts import OnnxModel, StageRecord
from edgepack.errors import VerificationError

_WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}  # op → input index of the weight


def weight_initializers(graph, min_elements: int) -> list:
    """Float initializers used as the weight input of Conv/ConvTranspose/Gemm/MatMul."""
    from onnx import TensorProto

    initializers = {init.name: init for init in graph.initializer}
    names = []
    for node in graph.node:
        index = _WEIGHT_OPS.get(node.op_type)
        for position, name in enumerate(node.input):
            if name in initializers and (position == index or (node.op_type in ("Gemm", "MatMul") and position == 0)) and name not in names:
                init = initializers[name]
                if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE) and int(np.prod(init.dims)) >= min_elements:
                    names.append(name)
    return [initializers[name] for name in names]


def _masks(arrays: list[np.ndarray], config) -> list[np.ndarray]:
    scores = [np.abs(array.astype(np.float64)) for array in arrays]
    if config.threshold is not None:
        return [score > config.threshold for score in scores]
    if config.scope == "global":
        everything = np.concatenate([score.ravel() for score in scores])
        count = int(np.floor(config.sparsity * len(everything)))
        cut = np.partition(everything, count - 1)[count - 1] if count > 0 else -np.inf
        return [score > cut for score in scores]
    masks = []
    for score in scores:
        count = int(np.floor(config.sparsity * score.size))
        order = np.argsort(score, axis=None, kind="stable")
        mask = np.ones(score.size, dtype=bool)
        mask[order[:count]] = False
        masks.append(mask.reshape(score.shape))
    return masks


def prune_onnx(model: OnnxModel, config, context) -> tuple[OnnxModel, StageRecord]:
    """Zero the smallest weights; writes context.workdir/pruned.onnx and measures what changed."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model.path))
    weights = weight_initializers(proto.graph, config.min_elements)
    arrays = [numpy_helper.to_array(init) for init in weights]
    layers = []
    for init, array, mask in zip(weights, arrays, _masks(arrays, config)):
        pruned = np.where(mask, array, 0).astype(array.dtype)
        init.CopyFrom(numpy_helper.from_array(pruned, init.name))
        layers.append({"layer": init.name, "shape": list(array.shape), "weights": int(array.size),
                       "nonzero_before": int(np.count_nonzero(array)), "nonzero_after": int(np.count_nonzero(pruned)),
                       "sparsity": round(1 - np.count_nonzero(pruned) / max(array.size, 1), 4)})
    path = context.workdir / "pruned.onnx"
    onnx.save(proto, str(path))
    total = sum(int(np.prod(init.dims)) for init in proto.graph.initializer)
    report = {"granularity": "weights", "criterion": {"criterion": "magnitude"},
              "before": {"params": total, "nonzero_params": total - sum(r["weights"] - r["nonzero_before"] for r in layers)},
              "after": {"params": total, "nonzero_params": total - sum(r["weights"] - r["nonzero_after"] for r in layers)},
              "layers": [{"layer": r["layer"], "type": "initializer", "out_before": r["shape"][0], "out_after": r["shape"][0],
                          "in_before": r["shape"][1] if len(r["shape"]) > 1 else 1, "in_after": r["shape"][1] if len(r["shape"]) > 1 else 1,
                          "weights_before": r["weights"], "weights_after": r["weights"], "sparsity": r["sparsity"]} for r in layers],
              "notes": ["dense compute: the bundle shrinks through params.sparse, latency does not change"]}
    pruned_model = OnnxModel.at(path, model.inputs, model.outputs)
    comparison = None
    if config.eval is not None:
        from edgepack.measure.evaluation import compare_quality, load_eval_data, onnx_predictor, predict

        data = load_eval_data(config.eval, model.inputs)
        comparison = compare_quality(predict(onnx_predictor(model.path), model.inputs, data)[0],
                                     predict(onnx_predictor(path), model.inputs, data)[0], data.labels, config.max_drop)
        report["quality"] = {"data": data.origin, "baseline": "the model before pruning (ONNX Runtime)", **comparison.to_json()}
    record = StageRecord("prune", config.to_json(), report)
    if comparison is not None and not comparison.passed:
        raise VerificationError(f"pruning loses too much: {comparison.line()}", "lower --sparsity or raise --max-drop")
    return pruned_model, record
