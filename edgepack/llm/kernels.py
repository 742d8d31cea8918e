"""Kernels of the language model: fp32 weight matmuls (tensor expressions), int8/int4 weight matmuls over the
interleaved layout of `weights.block_matrix` (TVMScript, vectorised by hand), embedding gathers, rotary embedding, causal attention over the KV cache (a tensor expression; for decode's one
row a hand-written kernel), and the in-place cache write (TVMScript, called with `call_tir_inplace`)."""

from __future__ import annotations

import numpy as np
from tvm import te, tirx as tir

from edgepack.llm.weights import QuantScheme, tile_rows


def dequantized(q: te.Tensor, scale: te.Tensor, scheme: QuantScheme | None, columns: int):
    """A function (row, column) → fp32 weight value read from the compressed tensors (interleaved by
    `block_matrix`: row o at [o // lanes, :, o % lanes])."""
    if scheme is None and len(q.shape) == 2:
        return lambda o, k: q[o, k]
    lanes = int(q.shape[2])
    if scheme is None:
        return lambda o, k: q[o // lanes, k, o % lanes]
    group = scheme.group_for(columns)
    if scheme.bits == 8:
        return lambda o, k: q[o // lanes, k, o % lanes].astype("float32") * scale[o // lanes, k // group, o % lanes]

    def int4(o, k):
        byte = q[o // lanes, k // 2, o % lanes]
        nibble = tir.bitwise_and(tir.shift_right(byte, (k % 2 * 4).astype("uint8")), tir.const(15, "uint8"))
        return (nibble.astype("float32") - 8.0) * scale[o // lanes, k // group, o % lanes]

    return int4


def linear(x: te.Tensor, weight: te.Tensor, out_features: int) -> te.Tensor:
    """y[i, o] = Σ_k x[i, k] · W[o, k] for an fp32 weight [out, in] (scheduled by compiler/schedules.py)."""
    rows, columns = x.shape
    k = te.reduce_axis((0, columns), name="k")
    return te.compute((rows, out_features), lambda i, o: te.sum(x[i, k] * weight[o, k], axis=k), name="linear")


def fp32_linear_function(columns: int, out_features: int, lanes: int):
    """A PrimFunc y[n, out] = x[n, in] · Wᵀ for an fp32 weight interleaved by `weights.interleave_rows` (n symbolic).

    Each parallel task owns one tile of `tile_rows(lanes)` output rows and streams its weights once per row of x:
    for every input k, one contiguous vector per `lanes` rows times the broadcast x[i, k], 8 inputs per step (a decode row reads the
    weights at the memory's pace; a prefill's rows find the tile in L2)."""
    from tvm.script import tirx as T

    vectors = tile_rows(lanes) // lanes
    tiles = -(-out_features // tile_rows(lanes))
    blocks = tiles * vectors
    unroll = next(u for u in (8, 4, 2, 1) if columns % u == 0)

    def products(x, w, i, block, k):
        """Σ_u x[i, k + u] · w[block, k + u, :] over `unroll` inputs, one expression summed as a tree: the accumulator
        is stored once per `unroll` inputs, and the loads of the next inputs do not wait on the previous sum (from
        memory, 1 → 4 / 8 inputs per step read 28 → 34–43 GB/s in one measurement, 2 threads)."""
        terms = [tir.Broadcast(x[i, k + u], lanes) * w.vload([block, k + u, 0], f"float32x{lanes}") for u in range(unroll)]
        while len(terms) > 1:
            terms = [terms[a] + terms[a + 1] if a + 1 < len(terms) else terms[a] for a in range(0, len(terms), 2)]
        return terms[0]

    @T.prim_func(private=True)
    def fp32_linear(var_x: T.handle, var_w: T.handle, var_y: T.handle):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True, "edgepack.hand_written": True})
        n = T.int64()
        x = T.match_buffer(var_x, (n, T.int64(columns)), "float32")
        w = T.match_buffer(var_w, (T.int64(blocks), T.int64(columns), T.int64(lanes)), "float32")
        y = T.match_buffer(var_y, (n, T.int64(out_features)), "float32")
        for t in T.parallel(T.int64(tiles)):
            acc = T.alloc_buffer((vectors, lanes), "float32", scope="local")
            for i in range(n):
                for r in T.unroll(vectors):
                    for lane in T.vectorized(lanes):
                        acc[r, lane] = T.float32(0)
                for k in range(T.int64(columns // unroll)):
                    for r in T.unroll(vectors):
                        acc[r, T.ramp(0, 1, lanes)] = acc[r, T.ramp(0, 1, lanes)] + products(x, w, i, t * T.int64(vectors) + r,
                                                                                             k * T.int64(unroll))
                for r in T.unroll(vectors):
                    for lane in range(lanes):
                        if (t * T.int64(vectors) + r) * T.int64(lanes) + lane < T.int64(out_features):
                            y[i, (t * T.int64(vectors) + r) * T.int64(lanes) + lane] = acc[r, lane]

    return fp32_linear


def quantized_linear_function(columns: int, out_features: int, scheme: QuantScheme, lanes: int):
    """A PrimFunc y[n, out] = x[n, in] · Wᵀ for a weight interleaved by `block_matrix` (n symbolic).

    Each parallel task owns one tile of `tile_rows(lanes)` output rows (tile_rows/lanes vectors). For every
    stored byte (int4: two inputs) it loads `lanes` contiguous bytes per vector, unpacks them to fp32 vectors
    and accumulates them times the broadcast input into the group's partial sums; each group's partial sums
    are multiplied by its scale vector once. The tile's weights stay in L1 across the n rows of a prefill."""
    from tvm.script import tirx as T

    group = scheme.group_for(columns)
    groups, int4 = columns // group, scheme.bits == 4
    step = group // 2 if int4 else group  # stored entries per group
    stored, dtype = (columns // 2, "uint8") if int4 else (columns, "int8")
    vectors = tile_rows(lanes) // lanes
    tiles = -(-out_features // tile_rows(lanes))
    blocks = tiles * vectors

    @T.prim_func(private=True)
    def quantized_linear(var_x: T.handle, var_q: T.handle, var_scale: T.handle, var_y: T.handle):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True, "edgepack.hand_written": True})
        n = T.int64()
        x = T.match_buffer(var_x, (n, T.int64(columns)), "float32")
        q = T.match_buffer(var_q, (T.int64(blocks), T.int64(stored), T.int64(lanes)), dtype)
        scale = T.match_buffer(var_scale, (T.int64(blocks), T.int64(groups), T.int64(lanes)), "float32")
        y = T.match_buffer(var_y, (n, T.int64(out_features)), "float32")
        for t in T.parallel(T.int64(tiles)):
            acc = T.alloc_buffer((vectors, lanes), "float32", scope="local")
            part = T.alloc_buffer((vectors, lanes), "float32", scope="local")
            for i in range(n):
                for r in T.unroll(vectors):
                    for lane in T.vectorized(lanes):
                        acc[r, lane] = T.float32(0)
                for g in range(T.int64(groups)):
                    for r in T.unroll(vectors):
                        for lane in T.vectorized(lanes):
                            part[r, lane] = T.float32(0)
                    for j in range(T.int64(step)):
                        for r in T.unroll(vectors):
                            for lane in T.vectorized(lanes):
                                if int4:  # a Python bool: TVMScript keeps one branch; a byte holds inputs 2j (low) and 2j+1
                                    part[r, lane] = part[r, lane] + x[i, g * T.int64(group) + j * T.int64(2)] * (T.Cast("float32", T.bitwise_and(T.Cast("int32", q[t * T.int64(vectors) + r, g * T.int64(step) + j, lane]), 15)) - T.float32(8)) + x[i, g * T.int64(group) + j * T.int64(2) + T.int64(1)] * (T.Cast("float32", T.shift_right(T.Cast("int32", q[t * T.int64(vectors) + r, g * T.int64(step) + j, lane]), 4)) - T.float32(8))
                                else:
                                    part[r, lane] = part[r, lane] + x[i, g * T.int64(group) + j] * T.Cast("float32", q[t * T.int64(vectors) + r, g * T.int64(step) + j, lane])
                    for r in T.unroll(vectors):
                        for lane in T.vectorized(lanes):
                            acc[r, lane] = acc[r, lane] + part[r, lane] * scale[t * T.int64(vectors) + r, g, lane]
                for r in T.unroll(vectors):
                    for lane in range(lanes):
                        if (t * T.int64(vectors) + r) * T.int64(lanes) + lane < T.int64(out_features):
                            y[i, (t * T.int64(vectors) + r) * T.int64(lanes) + lane] = acc[r, lane]

    return quantized_linear


def gather_rows(ids: te.Tensor, q: te.Tensor, scale: te.Tensor | None, scheme: QuantScheme | None, hidden: int) -> te.Tensor:
    """The (dequantized) embedding rows of `ids`."""
    weight = dequantized(q, scale, scheme, hidden)
    return te.compute((ids.shape[0], hidden), lambda i, c: weight(ids[i], c), name="embed")


def positions(table: te.Tensor, start, count) -> te.Tensor:
    """Learned position embeddings of positions start .. start+count-1 (GPT-2)."""
    return te.compute((count, table.shape[1]), lambda i, c: table[start + i, c], name="pos_embed")


def inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """RoPE's inverse frequencies, computed as transformers does (float32)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (1.0 / (np.float32(theta) ** exponent)).astype(np.float32)


def rotary(x: te.Tensor, inv_freq: te.Tensor, start) -> te.Tensor:
    """Rotary embedding (rotate-half form of Llama/Qwen2) of x [n, heads, head_dim] at positions start + i."""
    _, _, dim = x.shape
    half = int(dim) // 2

    def value(i, h, d):
        angle = (start + i).astype("float32") * inv_freq[d % half]
        rotated = tir.Select(d < half, -x[i, h, tir.min(d + half, dim - 1)], x[i, h, tir.max(d - half, 0)])
        return x[i, h, d] * tir.cos(angle) + rotated * tir.sin(angle)

    return te.compute(x.shape, value, name="rotary")


def attention(q: te.Tensor, cache: te.Tensor, layer: int, start, kv_heads: int) -> te.Tensor:
    """Causal attention of q [n, heads, dim] (positions start + i) over cache[layer] positions 0 .. start+n-1.

    Returns [n, heads * dim]."""
    n, heads, dim = q.shape
    group = int(heads) // kv_heads
    total = start + n
    scale = 1.0 / float(np.sqrt(int(dim)))
    d = te.reduce_axis((0, dim), name="d")
    dots = te.compute((heads, n, total), lambda h, i, j: te.sum(q[i, h, d] * cache[layer, 0, j, h // group, d], axis=d),
                      name="dots")
    scores = te.compute((heads, n, total), lambda h, i, j: tir.Select(j <= start + i, dots[h, i, j] * scale,
                                                                      tir.min_value("float32")), name="scores")
    j = te.reduce_axis((0, total), name="j")
    peak = te.compute((heads, n), lambda h, i: te.max(scores[h, i, j], axis=j), name="peak")
    weights = te.compute((heads, n, total), lambda h, i, t: te.exp(scores[h, i, t] - peak[h, i]), name="weights")
    j2 = te.reduce_axis((0, total), name="j2")
    norm = te.compute((heads, n), lambda h, i: te.sum(weights[h, i, j2], axis=j2), name="norm")
    j3 = te.reduce_axis((0, total), name="j3")
    mixed = te.compute((n, heads * dim), lambda i, c: te.sum(
        weights[c // dim, i, j3] * cache[layer, 1, j3, c // dim // group, c % dim], axis=j3), name="mixed")
    return te.compute((n, heads * dim), lambda i, c: mixed[i, c] / norm[c // dim, i], name="attention")


def decode_attention_function(cache_shape: tuple[int, ...], heads: int, lanes: int):
    """A PrimFunc (q [1, heads, dim], cache, layer, start) → [1, heads * dim]: one new token's attention over cache
    positions 0..start of `layer` (grouped-query heads), parallel over heads. The dot products over head_dim and the
    weighted sum of values run in vectors of the widest of `lanes`, lanes/2, ... that divides head_dim."""
    from tvm.script import tirx as T

    layers, _, max_seq, kv_heads, dim = cache_shape
    group = heads // kv_heads
    width = next(w for w in (lanes, lanes // 2, lanes // 4, lanes // 8, 1) if w >= 1 and dim % w == 0)
    chunks = dim // width
    scale = float(1.0 / np.sqrt(dim))

    def dot(q, cache, layer, j, h):
        """q[0, h] · key j of h's kv head: vector products summed, then the lanes halved by shuffles (a scalar)."""
        vector = None
        for c in range(chunks):
            term = (q.vload([0, h, c * width], f"float32x{width}")
                    * cache.vload([layer, 0, j, h // group, c * width], f"float32x{width}")) if width > 1 else (
                q[0, h, c] * cache[layer, 0, j, h // group, c])
            vector = term if vector is None else vector + term
        size = width
        while size > 1:
            size //= 2
            vector = tir.Shuffle([vector], list(range(size))) + tir.Shuffle([vector], list(range(size, 2 * size)))
        return vector

    @T.prim_func(private=True)
    def decode_attention(q: T.Buffer((1, heads, dim), "float32"),
                         cache: T.Buffer((layers, 2, max_seq, kv_heads, dim), "float32"),
                         layer: T.int64, start: T.int64, out: T.Buffer((1, heads * dim), "float32")):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True, "edgepack.hand_written": True})
        for h in T.parallel(heads):
            scores = T.alloc_buffer((max_seq,), "float32", scope="local")
            mixed = T.alloc_buffer((dim,), "float32", scope="local")
            peak = T.alloc_buffer((1,), "float32", scope="local")
            total = T.alloc_buffer((1,), "float32", scope="local")
            peak[0] = T.min_value("float32")
            for j in range(start + T.int64(1)):
                scores[j] = dot(q, cache, layer, j, h) * T.float32(scale)
                peak[0] = T.max(peak[0], scores[j])
            total[0] = T.float32(0)
            for j in range(start + T.int64(1)):
                scores[j] = T.exp(scores[j] - peak[0])
                total[0] = total[0] + scores[j]
            for d in T.vectorized(dim):
                mixed[d] = T.float32(0)
            for j in range(start + T.int64(1)):
                for c in range(chunks):
                    for lane in T.vectorized(width):
                        mixed[c * width + lane] = mixed[c * width + lane] + scores[j] * cache[layer, 1, j, h // group, c * width + lane]
            for d in range(dim):
                out[0, h * dim + d] = mixed[d] / total[0]

    return decode_attention


def write_kv_function(layers: int, max_seq: int, kv_heads: int, head_dim: int):
    """A PrimFunc writing k, v [n, kv_heads, head_dim] into cache[layer, 0/1, start:start+n] in place."""
    from tvm.script import tirx as T

    @T.prim_func(private=True)
    def write_kv(var_cache: T.handle, var_k: T.handle, var_v: T.handle, layer: T.int64, start: T.int64):
        T.func_attr({"tir.noalias": True})
        n = T.int64()
        cache = T.match_buffer(var_cache, (T.int64(layers), T.int64(2), T.int64(max_seq), T.int64(kv_heads), T.int64(head_dim)), "float32")
        k = T.match_buffer(var_k, (n, T.int64(kv_heads), T.int64(head_dim)), "float32")
        v = T.match_buffer(var_v, (n, T.int64(kv_heads), T.int64(head_dim)), "float32")
        for i, h, d in T.grid(n, T.int64(kv_heads), T.int64(head_dim)):
            cache[layer, T.int64(0), start + i, h, d] = k[i, h, d]
            cache[layer, T.int64(1), start + i, h, d] = v[i, h, d]

    return write_kv
