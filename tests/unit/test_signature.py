"""`--input name:DIMS[:dtype]` specs, ONNX element types and reproducible random inputs."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.errors import EdgepackError
from edgepack.runtime.bundle_format import TensorSpec
from edgepack.frontends.signature import SUPPORTED_DTYPES, numpy_dtype, parse_input_spec, parse_input_specs, random_inputs

FIX = "write it as name:1x3x224x224:float32"


@pytest.mark.parametrize("text, expected", [
    ("x:1x3x224x224:float32", TensorSpec("x", "float32", (1, 3, 224, 224))),
    ("x:1x3x224x224", TensorSpec("x", "float32", (1, 3, 224, 224))),
    ("ids:2X16:int64", TensorSpec("ids", "int64", (2, 16))),
    ("mask:8:bool", TensorSpec("mask", "bool", (8,))),
    ("scalar::float64", TensorSpec("scalar", "float64", ())),
    ("input.1:1x1:uint8", TensorSpec("input.1", "uint8", (1, 1))),
])
def test_parse_input_spec(text, expected):
    assert parse_input_spec(text) == expected


@pytest.mark.parametrize("text, problem, fix", [
    ("x", "cannot read input spec 'x'", FIX),
    (":1x3", "cannot read input spec ':1x3'", FIX),
    ("x:1:float32:extra", "cannot read input spec 'x:1:float32:extra'", FIX),
    ("x:1x3:float99", "input spec 'x:1x3:float99': unknown dtype 'float99'", f"use one of {', '.join(SUPPORTED_DTYPES)}"),
    ("x:1xa", "input spec 'x:1xa': shape '1xa' is not dimensions joined by 'x'", FIX),
    ("x:1,3", "input spec 'x:1,3': shape '1,3' is not dimensions joined by 'x'", FIX),
    ("x:0x3", "input spec 'x:0x3': every dimension must be at least 1", FIX),
    ("x:1x-3", "input spec 'x:1x-3': every dimension must be at least 1", FIX),
])
def test_bad_input_spec_is_refused(text, problem, fix):
    with pytest.raises(EdgepackError) as info:
        parse_input_spec(text)
    assert (info.value.problem, info.value.fix) == (problem, fix)


def test_parse_input_specs_keys_by_name_in_order():
    specs = parse_input_specs(["a:1x4", "b:1x6:int32"])
    assert list(specs) == ["a", "b"]
    assert specs["b"] == TensorSpec("b", "int32", (1, 6))
    assert parse_input_specs([]) == {}


def test_an_input_given_twice_is_refused():
    with pytest.raises(EdgepackError, match="input 'a' is given twice"):
        parse_input_specs(["a:1x4", "a:1x5"])


def test_onnx_element_types():
    from onnx import TensorProto

    assert numpy_dtype(TensorProto.FLOAT, "x") == "float32"
    assert numpy_dtype(TensorProto.INT64, "x") == "int64"
    assert numpy_dtype(TensorProto.FLOAT16, "x") == "float16"
    assert numpy_dtype(TensorProto.BOOL, "x") == "bool"
    assert [numpy_dtype(t, "x") for t in (TensorProto.INT16, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64)] == [
        "int16", "uint16", "uint32", "uint64"]
    with pytest.raises(EdgepackError) as info:
        numpy_dtype(TensorProto.STRING, "input 'words'")
    assert info.value.problem == f"input 'words' has an element type edgepack does not support (ONNX type {TensorProto.STRING}, STRING)"


def test_random_inputs_follow_the_signature_and_the_seed():
    specs = [TensorSpec("x", "float32", (2, 3)), TensorSpec("ids", "int64", (4,)), TensorSpec("m", "bool", (2, 2)),
             TensorSpec("h", "float16", (1,))]
    first = random_inputs(specs, seed=7)
    assert [(a.dtype.name, a.shape) for a in first] == [("float32", (2, 3)), ("int64", (4,)), ("bool", (2, 2)), ("float16", (1,))]
    assert all(0 <= v < 4 for v in first[1])
    again, other = random_inputs(specs, seed=7), random_inputs(specs, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
