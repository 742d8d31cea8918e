"""Calibration data for static quantization: `.npz`, a folder of `.npy`, or `file.py:function` yielding batches.

Whatever the source, samples end up stacked per input on axis 0 (each without the model's batch
axis) and are fed to ONNX Runtime's calibrators in batches of the model's batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.runtime.bundle_format import TensorSpec

FORMATS = "an .npz (one array per input), a folder of .npy files, or file.py:function yielding batches"


@dataclass(frozen=True)
class CalibrationSamples:
    """Samples per model input (stacked on axis 0, without the batch axis) and where they came from."""

    inputs: tuple[np.ndarray, ...]
    origin: str

    def __len__(self) -> int:
        return len(self.inputs[0])

    def batches(self, specs: Sequence[TensorSpec]) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of the model's exact input shapes; the last batch is padded with its first sample."""
        batch = specs[0].shape[0] if specs[0].shape else 1
        for start in range(0, len(self), batch):
            feed = {}
            for spec, stack in zip(specs, self.inputs):
                part = stack[start:start + batch]
                if len(part) < batch:
                    part = np.concatenate([part, np.repeat(part[:1], batch - len(part), axis=0)])
                feed[spec.name] = np.ascontiguousarray(part.reshape(spec.shape))
            yield feed


def _as_samples(array, spec: TensorSpec, where: str) -> np.ndarray:
    """One batch for one input → samples stacked on axis 0 (accepts a model batch, a stack, or one sample)."""
    array = np.asarray(array)
    sample_shape = tuple(spec.shape[1:])
    if tuple(array.shape) == tuple(spec.shape):
        array = array.reshape((-1, *sample_shape))
    elif tuple(array.shape) == sample_shape:
        array = array[None]
    elif tuple(array.shape[1:]) != sample_shape:
        raise EdgepackError(f"{where}: array of shape {tuple(array.shape)} does not fit input '{spec.name}' {tuple(spec.shape)}",
                            f"give samples of shape {sample_shape} stacked on axis 0")
    if array.dtype.kind not in "fiub":
        raise EdgepackError(f"{where}: array for input '{spec.name}' has dtype {array.dtype}", f"save {spec.dtype} numbers")
    return array.astype(spec.dtype, copy=False)


def _from_npz(path: Path, specs: Sequence[TensorSpec], limit: int | None) -> CalibrationSamples:
    from edgepack.measure.evaluation import load_eval_data

    data = load_eval_data(path, specs, limit)
    return CalibrationSamples(data.inputs, str(path))


def _from_folder(path: Path, specs: Sequence[TensorSpec]) -> CalibrationSamples:
    files = sorted(path.glob("*.npy"))
    if not files:
        raise EdgepackError(f"calibration folder '{path}' holds no .npy files", f"pass {FORMATS}")
    named = {file.stem: file for file in files}
    if len(specs) > 1 or specs[0].name in named:  # one file per input name, samples stacked on axis 0
        missing = [spec.name for spec in specs if spec.name not in named]
        if missing:
            raise EdgepackError(f"calibration folder '{path}' lacks {', '.join(f'{name}.npy' for name in missing)}",
                                "save one <input name>.npy per input, samples stacked on axis 0")
        stacks = [_as_samples(_load_npy(named[spec.name]), spec, str(named[spec.name])) for spec in specs]
    else:  # one-input model: every file is one sample or a stack of samples
        stacks = [np.concatenate([_as_samples(_load_npy(file), specs[0], str(file)) for file in files])]
    return CalibrationSamples(tuple(stacks), str(path))


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EdgepackError(f"cannot read '{path}' ({type(exc).__name__})", "save it with numpy.save") from None


def _from_function(text: str, specs: Sequence[TensorSpec], limit: int | None) -> CalibrationSamples:
    from edgepack.frontends.sources import import_file

    file_text, _, function_name = text.rpartition(":")
    module = import_file(Path(file_text))
    function = getattr(module, function_name, None)
    if not callable(function):
        raise EdgepackError(f"'{file_text}' has no function '{function_name}'", "name a function that yields calibration batches")
    stacks: list[list[np.ndarray]] = [[] for _ in specs]
    count = 0
    try:
        for index, batch in enumerate(function()):
            where = f"{text} batch {index}"
            if isinstance(batch, dict):
                missing = [spec.name for spec in specs if spec.name not in batch]
                if missing:
                    raise EdgepackError(f"{where} lacks input(s) {', '.join(missing)}", "yield {input name: array} for every input")
                arrays = [batch[spec.name] for spec in specs]
            else:
                arrays = list(batch) if isinstance(batch, (tuple, list)) else [batch]
                if len(arrays) != len(specs):
                    raise EdgepackError(f"{where} has {len(arrays)} array(s), the model has {len(specs)} input(s)",
                                        "yield one array per input (a tuple, or a dict by input name)")
            for stack, array, spec in zip(stacks, arrays, specs):
                stack.append(_as_samples(array, spec, where))
            count += len(stacks[0][-1])
            if limit is not None and count >= limit:
                break
    except EdgepackError:
        raise
    except Exception as exc:  # the user's generator may raise anything
        raise EdgepackError(f"{text}() raised {type(exc).__name__}: {exc}", "fix the calibration function") from None
    if not count:
        raise EdgepackError(f"{text}() yielded no batches", "yield at least one batch of inputs")
    return CalibrationSamples(tuple(np.concatenate(stack) for stack in stacks), text)


def load_calibration(source: str | Path, specs: Sequence[TensorSpec], limit: int | None = None) -> CalibrationSamples:
    """Read calibration samples from an .npz, a folder of .npy files, or `file.py:function`."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        samples = _from_folder(path, specs)
    elif text.endswith(".npz") or path.is_file():
        if not path.is_file():
            raise EdgepackError(f"calibration data '{path}' does not exist", f"pass {FORMATS}")
        samples = _from_npz(path, specs, limit)
    elif ".py:" in text:
        if not Path(text.rpartition(":")[0]).is_file():
            raise EdgepackError(f"calibration file '{text.rpartition(':')[0]}' does not exist", f"pass {FORMATS}")
        samples = _from_function(text, specs, limit)
    else:
        raise EdgepackError(f"calibration data '{text}' does not exist", f"pass {FORMATS}")
    if limit is not None and len(samples) > limit:
        samples = CalibrationSamples(tuple(stack[:limit] for stack in samples.inputs), samples.origin)
    return samples


def calibration_reader(samples: CalibrationSamples, specs: Sequence[TensorSpec]):
    """An ONNX Runtime CalibrationDataReader over the samples (rewindable, as quantize_static may read twice)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._feeds = list(samples.batches(specs))
            self._position = 0

        def get_next(self):
            if self._position >= len(self._feeds):
                return None
            self._position += 1
            return self._feeds[self._position - 1]

        def rewind(self):
            self._position = 0

        def __len__(self):
            return len(self._feeds)

        def set_range(self, start_index: int, end_index: int):
            self._feeds = self._feeds[start_index:end_index]
            self._position = 0

    return _Reader()
