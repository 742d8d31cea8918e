"""`--input name:1x3x224x224:float32` specs, and reading a model's I/O signature from ONNX."""

from __future__ import annotations

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.runtime.bundle_format import TensorSpec, np_dtype

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16",
                    "uint8", "bool", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float4_e2m1fn",
                    "float8_e8m0fnu", "int4", "uint4", "int2", "uint2")
_ONNX_TO_NUMPY = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
                  10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
                  # carried in byte containers (frontends/low_precision.py); ml_dtypes' names
                  17: "float8_e4m3fn", 18: "float8_e4m3fnuz", 19: "float8_e5m2", 20: "float8_e5m2fnuz", 21: "uint4", 22: "int4",
                  23: "float4_e2m1fn", 24: "float8_e8m0fnu", 25: "uint2", 26: "int2"}
_FIX = "write it as name:1x3x224x224:float32"


def parse_input_spec(text: str) -> TensorSpec:
    """Parse `name:DIMxDIM...[:dtype]` (dtype defaults to float32)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise EdgepackError(f"cannot read input spec '{text}'", _FIX)
    name, dims = parts[0], parts[1]
    dtype = parts[2] if len(parts) == 3 else "float32"
    if dtype not in SUPPORTED_DTYPES:
        raise EdgepackError(f"input spec '{text}': unknown dtype '{dtype}'", f"use one of {', '.join(SUPPORTED_DTYPES)}")
    tokens = dims.lower().split("x") if dims and all(t.isdigit() for t in dims.lower().split("x")) else (dims.split("x") if dims else [])
    named = tuple(token if _is_dim_name(token) else None for token in tokens)
    try:
        shape = tuple(0 if _is_dim_name(token) else int(token) for token in tokens)
    except ValueError:
        raise EdgepackError(f"input spec '{text}': shape '{dims}' is not dimensions joined by 'x'", _FIX) from None
    if any(dim < 1 for dim, label in zip(shape, named) if label is None):
        raise EdgepackError(f"input spec '{text}': every dimension must be at least 1", _FIX)
    if any(label is not None for label in named):  # sizes come from --dim NAME=LOW..HIGH (with_dim_ranges)
        return TensorSpec(name, dtype, shape, named, tuple(None for _ in named))
    spec = TensorSpec(name, dtype, shape)
    check_tensor_size(spec)
    return spec


def _is_dim_name(token: str) -> bool:
    """A dynamic axis' name in `--input`: an identifier starting with a capital letter (B, T, Seq)."""
    return token.isidentifier() and token[:1].isupper()


DEFAULT_DIM_RANGE = (1, 64)  # a named or model-dynamic axis without --dim


def parse_dim_ranges(texts: list[str]) -> dict[str, tuple[int, int]]:
    """Parse `--dim B=1..64` options into {name: (smallest, largest)}."""
    ranges = {}
    for text in texts:
        name, _, span = text.partition("=")
        low, _, high = span.partition("..")
        try:
            bounds = (int(low), int(high))
        except ValueError:
            bounds = None
        if not name.isidentifier() or bounds is None or not 1 <= bounds[0] <= bounds[1]:
            raise EdgepackError(f"cannot read --dim '{text}'", "write it as NAME=LOW..HIGH with 1 <= LOW <= HIGH, e.g. B=1..64")
        if name in ranges:
            raise EdgepackError(f"--dim {name} is given twice", "pass one --dim per dimension name")
        ranges[name] = bounds
    return ranges


def with_dim_ranges(spec: TensorSpec, ranges: dict[str, tuple[int, int]]) -> TensorSpec:
    """`spec` with each named axis given its range (DEFAULT_DIM_RANGE when --dim does not name it); shape: the smallest."""
    if not spec.dynamic:
        return spec
    bounds = tuple(ranges.get(d, DEFAULT_DIM_RANGE) if d is not None else None for d in spec.dims)
    shape = tuple(b[0] if b is not None else n for b, n in zip(bounds, spec.shape))
    return TensorSpec(spec.name, spec.dtype, shape, spec.dims, bounds)


def parse_input_specs(texts: list[str]) -> dict[str, TensorSpec]:
    """Parse several `--input` options into specs keyed by input name."""
    specs = {}
    for text in texts:
        spec = parse_input_spec(text)
        if spec.name in specs:
            raise EdgepackError(f"input '{spec.name}' is given twice", "pass one --input per model input")
        specs[spec.name] = spec
    return specs


def numpy_dtype(onnx_elem_type: int, where: str) -> str:
    """The numpy dtype name of an ONNX tensor element type."""
    if onnx_elem_type not in _ONNX_TO_NUMPY:
        from onnx import TensorProto

        name = TensorProto.DataType.Name(onnx_elem_type) if onnx_elem_type in TensorProto.DataType.values() else "unknown"
        raise EdgepackError(f"{where} has an element type edgepack does not support (ONNX type {onnx_elem_type}, {name})",
                            f"use one of {', '.join(SUPPORTED_DTYPES)}")
    return _ONNX_TO_NUMPY[onnx_elem_type]


MAX_TENSOR_BYTES = 4 << 30  # one example input larger than this cannot be made, run or shipped as a golden vector


def check_tensor_size(spec: TensorSpec) -> None:
    """Refuse, before anything is allocated, a tensor whose shape needs more than MAX_TENSOR_BYTES."""
    size = np_dtype(spec.dtype).itemsize
    for dim in spec.shape:
        size *= int(dim)
    if size > MAX_TENSOR_BYTES:
        shape = "x".join(map(str, spec.shape))
        raise EdgepackError(f"input '{spec.name}' of shape {shape} ({spec.dtype}) needs {size / (1 << 30):.3g} GiB per example, "
                            f"more than the {MAX_TENSOR_BYTES >> 30} GiB edgepack makes examples of",
                            "fix the model's input dimensions, or pin them with --input name:DIMxDIM")


def random_inputs(specs: list[TensorSpec] | tuple[TensorSpec, ...], seed: int) -> list[np.ndarray]:
    """Reproducible random arrays for a signature: normal floats, small non-negative integers."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        check_tensor_size(spec)
        dtype = np_dtype(spec.dtype)
        if dtype.kind == "f" or spec.dtype == "bfloat16" or spec.dtype.startswith("float"):
            arrays.append(rng.standard_normal(spec.shape).astype(dtype))
        elif dtype.kind == "b":
            arrays.append(rng.integers(0, 2, spec.shape).astype(bool))
        else:
            arrays.append(rng.integers(0, 4, spec.shape).astype(dtype))
    return arrays
