"""Run a torch pruning pass: score, prune, fine-tune, make permanent, measure before and after."""

from __future__ import annotations

import copy

from edgepack.artifacts import StageRecord
from edgepack.errors import EdgepackError, VerificationError
from edgepack.compression.prune import report as measure
from edgepack.compression.prune.criteria import Taylor, element_scores
from edgepack.compression.prune.data import calibration_batches, training_batches


def _calibration(config, model) -> tuple[list, bool, list[str]]:
    criterion = config.criterion
    if not isinstance(criterion, Taylor):
        return [], False, []
    if criterion.calib is not None:
        batches, labelled = calibration_batches(criterion.calib, model.inputs, criterion.batch_size, criterion.max_batches)
        note = [] if labelled else [f"'{criterion.calib}' has no labels: the taylor loss uses the model's own predictions as targets"]
        return batches, labelled, note
    if config.finetune is not None:
        batches = []
        for batch in training_batches(config.finetune.train, criterion.batch_size, config.finetune.seed):
            batches.append(batch)
            if len(batches) >= criterion.max_batches:
                break
        return batches, True, [f"taylor scores taken on the --train data ({len(batches)} batches)"]
    raise EdgepackError("the taylor criterion needs data to take gradients on", "pass --calib data.npz (or --train file.py:function)")


def _quality(config, model, before_module, after_module):
    from edgepack.measure.evaluation import compare_quality, load_eval_data, predict
    from edgepack.frontends.export import TorchModel

    data = load_eval_data(config.eval, model.inputs)
    run = lambda module: predict(TorchModel(module, module, model.inputs, None), model.inputs, data)[0]  # noqa: E731
    return data, compare_quality(run(before_module), run(after_module), data.labels, config.max_drop)


def _latency(model, module, context, name: str) -> dict:
    from edgepack.frontends.export import ExportConfig, TorchModel, export_to_onnx

    folder = context.workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    export_to_onnx(TorchModel(module, module, model.inputs, None), folder / "model.onnx", ExportConfig())
    return measure.compiled_latency(folder / "model.onnx", model.inputs, context.target, folder / "compiled")


def prune_torch(model, config, context):
    """The TorchPass body shared by ChannelPrune and WeightPrune; returns the pruned TorchModel and its record."""
    import torch

    from edgepack.frontends.export import TorchModel
    from edgepack.compression.prune.finetune import fine_tune
    from edgepack.compression.prune.structured import prune_channels
    from edgepack.compression.prune.unstructured import make_permanent, prune_weights
    from edgepack.frontends.signature import random_inputs

    module = model.module
    if not isinstance(module, torch.nn.Module) or isinstance(model.program, torch.export.ExportedProgram):
        raise EdgepackError("pruning needs the model's nn.Module layers, which a .pt2 program does not keep",
                            "pass the model as file.py:factory")
    module.eval()
    original = copy.deepcopy(module)
    examples = tuple(torch.from_numpy(array) for array in random_inputs(model.inputs, 0))
    shapes_before = measure.layer_shapes(module)
    if not shapes_before:
        raise EdgepackError("the model has no Conv or Linear layers to prune", "pruning works on nn.Conv*/nn.Linear modules")
    counts_before = measure.model_counts(module, examples)
    batches, labelled, notes = _calibration(config, model)
    context.progress(f"scoring weights ({config.criterion.name})")
    scores = element_scores(config.criterion, module, batches, labelled)
    report: dict = {"granularity": config.granularity, "criterion": config.criterion.describe(), "notes": notes}
    if config.granularity == "channels":
        report["groups"] = prune_channels(module, examples, scores, config.sparsity, config.threshold, config.scope)
    else:
        prune_weights(module, scores, config.sparsity, config.threshold, config.scope)
    if config.finetune is not None:
        context.progress("fine-tuning")
        report["finetune"] = fine_tune(module, config.finetune, context.progress)
    make_permanent(module)
    module.eval()
    with torch.no_grad():
        out_before, out_after = original(*examples), module(*examples)
    flat = lambda value: value if isinstance(value, (tuple, list)) else (value,)  # noqa: E731
    if [tuple(t.shape) for t in flat(out_before)] != [tuple(t.shape) for t in flat(out_after)]:
        raise EdgepackError("pruning changed the model's output shape", "report the model; use --granularity weights meanwhile")
    report["before"], report["after"] = counts_before, measure.model_counts(module, examples)
    report["layers"] = measure.per_layer(shapes_before, measure.layer_shapes(module))
    if config.bench:
        context.progress("compiling both models to time them")
        report["before"].update(_latency(model, original, context, "before"))
        report["after"].update(_latency(model, module, context, "after"))
    comparison = None
    if config.eval is not None:
        context.progress("measuring quality")
        data, comparison = _quality(config, model, original, module)
        report["quality"] = {"data": data.origin, "baseline": "the model before pruning (PyTorch)", **comparison.to_json()}
    record = StageRecord("prune", config.to_json(), report)
    if comparison is not None and not comparison.passed:
        raise VerificationError(f"pruning loses too much: {comparison.line()}",
                                "lower --sparsity, fine-tune with --train, or raise --max-drop")
    pruned = TorchModel(module, module, model.inputs, model.declared_version)
    return pruned, record
