"""The public Python API, re-exported by `edgepack/__init__.py`; every CLI command is a call into it.

`edgepack.build` and `edgepack.deploy` are callable modules (the package attributes of those names are the
submodules edgepack.build and edgepack.deploy); calling them runs `build()` and `deploy()` below.

    import edgepack
    edgepack.quantize("model.onnx", "model.int8.onnx", "int8-dynamic")
    result = edgepack.build("model.int8.onnx", "x86_64", "dist")
    outputs = edgepack.load(result.bundle.path).run(inputs)

Examples and options: docs/api.md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Sequence

from edgepack.artifacts import StageRecord
from edgepack.build import BuildResult, EvaluationConfig, build
from edgepack.compiler.tune import TuneConfig, TuneProgress, tune_model
from edgepack.compression.distill import distill
from edgepack.compression.prune import ChannelPrune, FineTune, Magnitude, OnnxWeightPrune, Taylor, WeightPrune, prune
from edgepack.compression.quantize import QualityGate, quantization_config
from edgepack.compression.quantize import quantize as _quantize
from edgepack.deploy.operations import deploy
from edgepack.pipeline import plan_front, run_front
from edgepack.runtime.loader import load

__all__ = [
    "build",
    "quantize",
    "prune",
    "distill",
    "tune",
    "load",
    "deploy",
    "quantization_config",
    "QualityGate",
    "ChannelPrune",
    "WeightPrune",
    "OnnxWeightPrune",
    "Magnitude",
    "Taylor",
    "FineTune",
    "TuneConfig",
    "EvaluationConfig",
    "BuildResult",
]


def quantize(
    model: str | Path,
    out: str | Path,
    mode="int8-dynamic",
    *,
    target: str = "x86_64",
    inputs: Sequence[str] = (),
    progress: Callable[[str], None] = lambda line: None,
    **config,
) -> StageRecord:
    """Quantize MODEL into the ONNX file `out` (as `edgepack quantize`); `mode` is a name or a config.

    Keyword options of `quantization_config` (calibration, method, gate, exclude, group_size) go with a name."""
    chosen = quantization_config(mode, **config) if isinstance(mode, str) else mode
    return _quantize(model, Path(out), chosen, inputs=inputs, target=target, progress=progress)


def tune(
    model: str | Path,
    target: str = "x86_64",
    trials: int | TuneConfig = 64,
    inputs: Sequence[str] = (),
    progress: Callable[[TuneProgress], None] = lambda state: None,
) -> StageRecord:
    """Tune MODEL's kernels into the target's tuning database (as `edgepack tune`): the pipeline's front half
    stopped after pre-flight, then MetaSchedule. Later builds of any model with the same kernels apply the records."""
    config = trials if isinstance(trials, TuneConfig) else TuneConfig(trials=trials)
    plan = plan_front(str(model), target, list(inputs))
    with tempfile.TemporaryDirectory(prefix="edgepack-tune-") as workdir:
        front = run_front(plan, Path(workdir), stop="preflight")
        return tune_model(front.model, plan.target, config, progress)
