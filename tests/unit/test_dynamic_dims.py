"""Named (dynamic) axes in the Python side of both loaders' checks: ranges, shared names, manifest fields, --dim."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.errors import EdgepackError
from edgepack.frontends.signature import parse_dim_ranges, parse_input_spec, with_dim_ranges
from edgepack.runtime.bundle_format import BundleError, IntegrityError, TensorSpec, check_inputs, check_manifest_fields


def _specs():
    ranges = parse_dim_ranges(["B=1..8", "T=2..5"])
    return [with_dim_ranges(parse_input_spec("x:BxTx3:float32"), ranges), with_dim_ranges(parse_input_spec("m:BxT:int64"), ranges)]


def test_any_size_inside_the_range_is_accepted_and_the_smallest_is_the_shape():
    x, m = _specs()
    assert x.shape == (1, 2, 3) and x.dims == ("B", "T", None) and x.bounds == ((1, 8), (2, 5), None)
    for b, t in ((1, 2), (8, 5), (3, 4)):
        check_inputs([x, m], [np.zeros((b, t, 3), np.float32), np.zeros((b, t), np.int64)])
    assert TensorSpec.from_json(x.to_json(), {"B": [1, 8], "T": [2, 5]}) == x


@pytest.mark.parametrize("arrays, message", [
    ((np.zeros((9, 2, 3), np.float32), np.zeros((9, 2), np.int64)), "input 'x' dim 0 (B): 9 is outside the bundle's range 1..8"),
    ((np.zeros((2, 2, 4), np.float32), np.zeros((2, 2), np.int64)), "input 'x' dim 2: expected 3, got 4"),
    ((np.zeros((2, 3, 3), np.float32), np.zeros((2, 4), np.int64)), "input 'm' dim 1 (T): 4, but another input gave T = 3"),
])
def test_sizes_outside_the_range_or_disagreeing_are_refused_in_one_line(arrays, message):
    with pytest.raises(BundleError) as info:
        check_inputs(_specs(), list(arrays))
    assert str(info.value).startswith(message + "; ")


def test_manifest_dims_must_name_a_range():
    manifest = {"files": {"model.so": {"sha256": "0" * 64, "size": 1}}, "name": "n", "version": "1", "library": "model.so",
                "target": {"arch": "x86_64"}, "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3], "dims": ["B", None]}],
                "outputs": [], "params": {"file": "model.so", "names": []}, "golden": {"atol": 0, "rtol": 0, "cases": []}}
    with pytest.raises(IntegrityError, match="'dims' needs one name of 'dim_ranges'"):
        check_manifest_fields(manifest)
    check_manifest_fields({**manifest, "dim_ranges": {"B": [1, 64]}})
    with pytest.raises(IntegrityError, match="dim_ranges"):
        check_manifest_fields({**manifest, "dim_ranges": {"B": [0, 64]}})


@pytest.mark.parametrize("text", ["B=0..4", "B=5..2", "B=1-4", "1B=1..4", "B"])
def test_bad_dim_options_are_refused(text):
    with pytest.raises(EdgepackError, match="cannot read --dim"):
        parse_dim_ranges([text])
