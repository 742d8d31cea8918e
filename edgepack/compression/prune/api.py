"""`edgepack prune MODEL`: prune a model and write the result (ONNX, or a .pt2 program for PyTorch models)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgepack.artifacts import StageRecord
from edgepack.errors import EdgepackError, first_line

OUTPUT_SUFFIXES = (".onnx", ".pt2")


@dataclass(frozen=True)
class PruneResult:
    """Where the pruned model was written and what the pass measured."""

    path: Path | None
    record: StageRecord


def check_output(out: Path | None, force: bool) -> None:
    """Refuse an output with an unknown suffix or one that exists (without --force) before any work."""
    if out is None:
        return
    if Path(out).suffix not in OUTPUT_SUFFIXES:
        raise EdgepackError(f"output '{out}' must end in {' or '.join(OUTPUT_SUFFIXES)}", "pass -o pruned.onnx or -o pruned.pt2")
    if Path(out).exists() and not force:
        raise EdgepackError(f"'{out}' already exists", "pass --force to replace it")


def prune(model: str, config, target: str = "x86_64", out: Path | None = None, inputs: list[str] = (),
          force: bool = False, progress: Callable[[str], None] = lambda line: None) -> PruneResult:
    """Prune MODEL with `config` (ChannelPrune, WeightPrune or OnnxWeightPrune) and write it to `out`."""
    from edgepack.compression.prune.config import OnnxWeightPrune
    from edgepack.frontends.sources import OnnxSource, parse_source
    from edgepack.pipeline import plan_front, run_front, write_onnx

    check_output(out, force)
    is_onnx = isinstance(parse_source(model), OnnxSource)
    if is_onnx != isinstance(config, OnnxWeightPrune):
        raise EdgepackError("channel and taylor pruning need a PyTorch model (file.py:factory)" if is_onnx
                            else "ONNX-only pruning was asked for a PyTorch model",
                            "prune ONNX files by weight magnitude (granularity weights, criterion magnitude)" if is_onnx else "use ChannelPrune or WeightPrune")
    if is_onnx and out is not None and Path(out).suffix != ".onnx":
        raise EdgepackError("an ONNX model is written back as ONNX", "pass -o pruned.onnx")
    passes = {"onnx_passes": (config,)} if is_onnx else {"torch_passes": (config,)}
    plan = plan_front(model, target, list(inputs), **passes)
    to_program = out is not None and Path(out).suffix == ".pt2"
    with tempfile.TemporaryDirectory(prefix="edgepack-prune-") as workdir:
        work = Path(workdir)
        result = run_front(plan, work, progress, stop="torch" if to_program else "passes")
        record = next(r for r in result.records if r.stage == config.stage)
        written = work / ("pruned" + (Path(out).suffix if out else ".onnx"))
        if to_program:
            _save_program(result.torch_model, written)
        else:
            write_onnx(result.model, written, [*plan.prior_stages, *result.records])
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(written), str(out))
    return PruneResult(Path(out) if out else None, record)


def _save_program(model, path: Path) -> None:
    import torch

    from edgepack.frontends.signature import random_inputs

    examples = tuple(torch.from_numpy(array) for array in random_inputs(model.inputs, 0))
    try:
        torch.export.save(torch.export.export(model.module, examples), str(path))
    except Exception as exc:  # torch.export raises many types
        raise EdgepackError(f"torch.export failed on the pruned model: {first_line(exc)}", "write ONNX instead: -o pruned.onnx") from None
