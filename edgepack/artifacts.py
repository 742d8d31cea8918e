"""The artifacts that flow between stages; each type says which stage made it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgepack.runtime.bundle_format import TensorSpec, sha256_file
from edgepack.targets import TargetSpec

__all__ = ["TensorSpec", "OnnxModel", "CompiledModule", "Bundle", "StageRecord"]


@dataclass(frozen=True)
class StageRecord:
    """One stage of a build as recorded in the manifest's provenance: its config and report."""

    stage: str
    config: dict
    report: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"stage": self.stage, "config": self.config, "report": self.report}

    @classmethod
    def from_json(cls, data: dict) -> "StageRecord":
        """The record `to_json` wrote (stage records travel in ONNX metadata between commands)."""
        return cls(str(data["stage"]), dict(data["config"]), dict(data.get("report", {})))


@dataclass(frozen=True)
class OnnxModel:
    """A checked ONNX file with static shapes, ready to compile."""

    path: Path
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def at(cls, path: Path, inputs, outputs) -> "OnnxModel":
        """The artifact for a file already written at `path`."""
        return cls(Path(path), sha256_file(Path(path)), tuple(inputs), tuple(outputs))


@dataclass(frozen=True)
class CompiledModule:
    """A TVM library and its weights for one target, compiled from an OnnxModel."""

    library: Path
    params: Path
    param_names: tuple[str, ...]
    target: TargetSpec
    source: OnnxModel


@dataclass(frozen=True)
class Bundle:
    """A bundle directory on disk, with its parsed manifest."""

    path: Path
    manifest: dict
