"""Model quality on the user's data: accuracy with labels, agreement with a reference without.

Shared by every stage that changes a model (quantize, prune, distill) and by the build, which
measures the compiled bundle against the original model and applies the `--max-drop` gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgepack.errors import EdgepackError, VerificationError
from edgepack.runtime.bundle_format import TensorSpec

LABEL_KEYS = ("labels", "y")
Predictor = Callable[[list[np.ndarray]], list[np.ndarray]]  # one model call: input arrays → output arrays


@dataclass(frozen=True)
class EvalData:
    """Samples for each model input (stacked on axis 0, without the model's batch axis) and optional labels."""

    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray | None
    origin: str

    def __len__(self) -> int:
        return len(self.inputs[0])


def load_eval_data(path: Path, inputs: Sequence[TensorSpec], limit: int | None = None) -> EvalData:
    """Read an .npz with one array per input name (or `x` for a one-input model) and `labels`/`y` if labelled.

    Samples are stacked on axis 0; each sample has the model's input shape without its batch axis
    (or the full shape for models whose batch is 1)."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise EdgepackError(f"cannot read evaluation data '{path}' ({type(exc).__name__})",
                            "pass an .npz saved with numpy.savez: one array per input, plus 'labels'") from None
    if len(inputs) == 1 and inputs[0].name not in arrays and "x" in arrays:
        arrays[inputs[0].name] = arrays.pop("x")
    missing = [spec.name for spec in inputs if spec.name not in arrays]
    if missing:
        raise EdgepackError(f"'{path}' lacks arrays for input(s) {', '.join(missing)}",
                            f"save one array per input name ({', '.join(s.name for s in inputs)}), samples on axis 0")
    stacks = []
    for spec in inputs:
        stack = arrays[spec.name]
        sample_shape = spec.shape[1:]
        if tuple(stack.shape[1:]) == tuple(spec.shape) and spec.shape[:1] == (1,):
            stack = stack.reshape((-1, *sample_shape))
        if tuple(stack.shape[1:]) != tuple(sample_shape):
            raise EdgepackError(f"'{path}' array '{spec.name}' has samples of shape {tuple(stack.shape[1:])}, "
                                f"the model takes {tuple(sample_shape)} per sample", "stack samples on axis 0")
        stacks.append(stack.astype(spec.dtype, copy=False))
    labels = next((arrays[key] for key in LABEL_KEYS if key in arrays), None)
    count = min(len(stack) for stack in stacks)
    if count == 0:
        raise EdgepackError(f"'{path}' holds no samples", "stack at least one sample per input on axis 0")
    if labels is not None and len(labels) != count:
        raise EdgepackError(f"'{path}' has {count} samples but {len(labels)} labels", "give one label per sample")
    if limit is not None:
        count = min(count, limit)
    return EvalData(tuple(stack[:count] for stack in stacks), None if labels is None else labels[:count], str(path))


def predict(run: Predictor, inputs: Sequence[TensorSpec], data: EvalData) -> list[np.ndarray]:
    """Run `run` over all samples in batches of the model's batch size; outputs stacked per sample."""
    batch = inputs[0].shape[0] if inputs[0].shape else 1
    collected: list[list[np.ndarray]] = []
    for start in range(0, len(data), batch):
        chunk = [stack[start:start + batch] for stack in data.inputs]
        real = len(chunk[0])
        if real < batch:  # pad the last batch with copies of its first sample
            chunk = [np.concatenate([part, np.repeat(part[:1], batch - real, axis=0)]) for part in chunk]
        outputs = run([part.reshape(spec.shape) for part, spec in zip(chunk, inputs)])
        if not collected:
            collected = [[] for _ in outputs]
        for index, output in enumerate(outputs):
            collected[index].append(np.asarray(output).reshape((batch, -1))[:real])
    return [np.concatenate(parts) for parts in collected]


def onnx_predictor(path: Path, fuse: bool = True) -> Predictor:
    """A predictor running an ONNX file in ONNX Runtime (`fuse=False`: the graph as written, see reference)."""
    from edgepack.measure.reference import onnxruntime_session

    session = onnxruntime_session(path, fuse=fuse)
    names = [value.name for value in session.get_inputs()]
    return lambda arrays: session.run(None, dict(zip(names, arrays)))


def top1(outputs: np.ndarray) -> np.ndarray:
    """Predicted class per sample (argmax over the flattened output)."""
    return outputs.reshape(len(outputs), -1).argmax(axis=1)


def measure(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None = None) -> dict:
    """Quality of one output head: accuracy (with labels) and agreement with `reference` outputs."""
    report: dict = {"samples": int(len(outputs))}
    if labels is not None:
        report["accuracy"] = float(np.mean(top1(outputs) == labels.reshape(-1)))
    if reference is not None:
        got, ref = outputs.reshape(len(outputs), -1).astype(np.float64), reference.reshape(len(reference), -1).astype(np.float64)
        report["top1_agreement"] = float(np.mean(top1(got) == top1(ref)))
        norms = np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)
        report["cosine"] = float(np.mean(np.sum(got * ref, axis=1) / np.maximum(norms, 1e-30)))
        noise = float(np.sum((got - ref) ** 2))
        report["snr_db"] = float("inf") if noise == 0 else float(10 * np.log10(max(float(np.sum(ref ** 2)), 1e-30) / noise))
    return report


def parse_percent(text: str, option: str, example: str, allow_zero: bool = True) -> float:
    """`1%`, `1.5 %` or a fraction such as `0.01` → a fraction in [0, 1) (or (0, 1) without `allow_zero`)."""
    value = text.strip()
    try:
        number = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise EdgepackError(f"{option} '{text}' is not a number", f"write it as {example}") from None
    if not (0 <= number < 1 if allow_zero else 0 < number < 1):
        raise EdgepackError(f"{option} '{text}' is outside 0%..100%", f"write it as {example}")
    return number


def parse_max_drop(text: str) -> float:
    """`--max-drop 1%` or `0.01` → the largest allowed drop as a fraction."""
    return parse_percent(text, "--max-drop", "1% or 0.01")


@dataclass(frozen=True)
class QualityComparison:
    """Quality before and after a change, with the drop the gate judges."""

    metric: str  # "accuracy" with labels, else "top1_agreement" against the model before the change
    before: dict
    after: dict
    max_drop: float | None

    @property
    def drop(self) -> float:
        if self.metric == "accuracy":
            return self.before["accuracy"] - self.after["accuracy"]
        return 1.0 - self.after["top1_agreement"]

    @property
    def passed(self) -> bool:
        return self.max_drop is None or self.drop <= self.max_drop + 1e-12

    def to_json(self) -> dict:
        return {"metric": self.metric, "before": self.before, "after": self.after, "drop": round(self.drop, 6),
                "max_drop": self.max_drop, "passed": self.passed}

    def line(self) -> str:
        """One human-readable line, e.g. `accuracy 0.989 → 0.983 (drop 0.6 points, max 1.0)`."""
        before = self.before.get(self.metric, 1.0)
        limit = "" if self.max_drop is None else f", max {self.max_drop * 100:.1f}"
        return f"{self.metric} {before:.4f} → {self.after[self.metric]:.4f} (drop {self.drop * 100:.2f} points{limit})"


def compare_quality(before_outputs: np.ndarray, after_outputs: np.ndarray, labels: np.ndarray | None,
                    max_drop: float | None) -> QualityComparison:
    """Measure both models on the same samples; the metric is accuracy with labels, else top-1 agreement."""
    before = measure(before_outputs, labels)
    after = measure(after_outputs, labels, reference=before_outputs)
    return QualityComparison("accuracy" if labels is not None else "top1_agreement", before, after, max_drop)


def require_quality(comparison: QualityComparison, what: str) -> None:
    """Raise a one-line VerificationError when the drop exceeds `--max-drop`."""
    if not comparison.passed:
        raise VerificationError(f"{what} loses too much: {comparison.line()}",
                                "raise --max-drop, use --auto to keep sensitive layers in float, or fine-tune")
