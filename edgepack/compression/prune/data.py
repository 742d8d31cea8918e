"""Data for pruning: calibration batches (.npz, labelled or not) and the user's training function."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.measure.evaluation import load_eval_data
from edgepack.runtime.bundle_format import TensorSpec

Batch = tuple[list[np.ndarray], np.ndarray | None]  # inputs (one array per model input), labels or None


def calibration_batches(path: Path, inputs: Sequence[TensorSpec], batch_size: int, max_batches: int | None) -> tuple[list[Batch], bool]:
    """Batches of `path` (.npz, one array per input and optional 'labels'); returns them and whether labelled."""
    data = load_eval_data(Path(path), inputs)
    batches = []
    for start in range(0, len(data), batch_size):
        if max_batches is not None and len(batches) >= max_batches:
            break
        labels = None if data.labels is None else data.labels[start:start + batch_size]
        batches.append(([stack[start:start + batch_size] for stack in data.inputs], labels))
    return batches, data.labels is not None


def parse_train_function(text: str):
    """`file.py:function` → the callable (checked before any work)."""
    from edgepack.frontends.sources import import_file

    path, sep, name = text.rpartition(":")
    if not sep or not path.endswith(".py") or not name.isidentifier():
        raise EdgepackError(f"--train '{text}' is not file.py:function", "pass e.g. --train data.py:train_batches")
    if not Path(path).is_file():
        raise EdgepackError(f"--train file '{path}' does not exist", "check the path")
    function = getattr(import_file(Path(path)), name, None)
    if not callable(function):
        raise EdgepackError(f"'{path}' has no function '{name}'", "define it: it returns (inputs, labels) or yields batches")
    return function


def _as_inputs(value) -> list[np.ndarray]:
    arrays = list(value) if isinstance(value, (tuple, list)) else [value]
    return [np.asarray(array) for array in arrays]


def training_batches(text: str, batch_size: int, seed: int) -> Iterator[Batch]:
    """One epoch of the user's training data: `function()` returns (inputs, labels) arrays, which are
    shuffled and batched here, or is a generator yielding (inputs, labels) batches itself."""
    function = parse_train_function(text)
    try:
        result = function()
    except Exception as exc:  # user code
        raise EdgepackError(f"--train function '{text}' failed: {type(exc).__name__}: {exc}", "fix the function") from None
    if inspect.isgenerator(result) or (not isinstance(result, (tuple, list)) and hasattr(result, "__iter__")):
        for item in result:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise EdgepackError(f"--train '{text}' yielded a {type(item).__name__}", "yield (inputs, labels) pairs")
            yield _as_inputs(item[0]), np.asarray(item[1])
        return
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise EdgepackError(f"--train '{text}' returned a {type(result).__name__}", "return (inputs, labels) or yield batches")
    inputs, labels = _as_inputs(result[0]), np.asarray(result[1])
    if any(len(array) != len(labels) for array in inputs):
        raise EdgepackError(f"--train '{text}' returned {len(inputs[0])} samples but {len(labels)} labels", "give one label per sample")
    order = np.random.default_rng(seed).permutation(len(labels))
    for start in range(0, len(labels), batch_size):
        index = order[start:start + batch_size]
        yield [array[index] for array in inputs], labels[index]
