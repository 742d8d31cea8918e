"""Winograd F(m x m, 3x3) algebra (edgepack.compiler.winograd): the weight transform done at build time, with the
input and output transforms applied in numpy, equals a direct convolution."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.compiler.winograd import tile_for, transform_matrices, transform_weight


def _direct(tile_input: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Valid 3x3 convolution of one input tile [C, alpha, alpha] with weight [K, C, 3, 3]: [K, m, m], float64."""
    size = tile_input.shape[1] - 2
    out = np.zeros((weight.shape[0], size, size))
    for y in range(size):
        for x in range(size):
            out[:, y, x] = np.einsum("cij,kcij->k", tile_input[:, y:y + 3, x:x + 3], weight)
    return out


@pytest.mark.parametrize("tile", [2, 4, 6])
def test_weight_transform_then_tiles_equal_a_direct_convolution(tile):
    rng = np.random.default_rng(tile)
    channels, outputs, lanes = 16, 8, 4
    weight = rng.standard_normal((outputs, channels, 3, 3)).astype(np.float32)
    # packed as conv_layout packs it: [O/y, C/x, KH, KW, x, y]
    packed = weight.reshape(outputs // lanes, lanes, channels // lanes, lanes, 3, 3).transpose(0, 2, 4, 5, 3, 1)
    u = transform_weight(packed, tile)
    alpha = tile + 2
    assert u.shape == (alpha, alpha, 1, channels // lanes, lanes, outputs) and u.dtype == np.float32  # one GEMM block of 8
    A, B, _ = transform_matrices(tile)
    tile_input = rng.standard_normal((channels, alpha, alpha))
    v = np.einsum("ia,cij,jb->abc", B, tile_input, B)
    u = u.transpose(0, 1, 3, 4, 2, 5).reshape(alpha, alpha, channels, outputs).astype(np.float64)
    m = np.einsum("abc,abck->abk", v, u)
    y = np.einsum("ai,abk,bj->kij", A, m, A)
    np.testing.assert_allclose(y, _direct(tile_input, weight.astype(np.float64)), atol=1e-5 * tile ** 2)


def test_tile_rule_follows_the_measured_shapes():
    shapes = ((64, 56), (128, 28), (256, 14), (512, 7))
    assert [tile_for(c, c, size, size, 16) for c, size in shapes] == [4, 4, 2, 2]  # AVX-512
    assert [tile_for(c, c, size, size, 8) for c, size in shapes] == [4, 4, 4, 4]  # AVX2: F(4,3) won everywhere
    assert tile_for(32, 32, 56, 56, 16) == 0 and tile_for(64, 64, 14, 14, 16) == 0  # direct: little or nothing to gain
