"""Integer dot-product kernels for the language model's single-row (decode) weight matmuls, as llama.cpp's
Q8_0/Q4_0 path computes them: the activation row is quantized once per matmul, then integer dot products.

- `quantize_rows_function`: x fp32 [m, in] → xq int8 [m, in], one scale per weight group (symmetric:
  scale = max|x| / 127, xq = round(x / scale)), and the group's correction `-offset · Σ xq` (int32).
- `integer_linear_function`: y = Σ_groups (Σ_group wq · xq + correction) · w_scale · x_scale over the weights
  of `weights.block_matrix` with 16 lanes (the AVX-512 interleave), unchanged: prefill's fp32-activation kernel
  reads the same bytes. AVX512-VNNI's `vpdpbusd` multiplies unsigned by signed bytes, so the *weights* are the
  unsigned operand: int4 nibbles are stored offset by 8 (0..15) and used as they are; int8 weights are made
  unsigned by flipping their sign bit (w + 128, one XOR per 64 bytes). The offset's contribution,
  offset · Σ xq, is subtracted through the group's correction, computed once per activation row, so the
  int32 sum equals Σ w · xq exactly.
- A 64-byte load holds 4 stored bytes of 16 rows, row-minor (`[byte, row]`); two shuffles (`vpermd` across
  128-bit lanes, `vpshufb` within them) make it row-major (`[row, byte]`), the 4 bytes per int32 lane that
  `vpdpbusd` reads. int4: byte j holds inputs 2j (low nibble) and 2j+1 (high), so a load's low nibbles
  are inputs k, k+2, k+4, k+6 and its high nibbles k+1, k+3, ...: the quantizer stores each 8 inputs in that
  order (evens, then odds) so both 4-byte activation words are contiguous.
"""

from __future__ import annotations

from edgepack.compiler.int8_dot import ISAS
from edgepack.llm.weights import QuantScheme, tile_rows

LANES = 16  # vpdpbusd.512: 16 int32 lanes, the AVX-512 interleave of block_matrix
BYTES_PER_LOAD = 4  # stored bytes per row in one 64-byte load


def unsupported(columns: int, scheme: QuantScheme, lanes: int, feature: str | None) -> str | None:
    """Why a matrix with this many inputs cannot take the integer kernel on this target, or None."""
    if feature != "avx512_vnni":
        return "the target has no AVX512-VNNI (cpu_features avx512_vnni)"
    if lanes != LANES:
        return f"the weights are interleaved by {lanes} lanes, the kernel reads 16"
    group = scheme.group_for(columns)
    if group % 8:
        return f"its group of {group} inputs is not a multiple of 8"
    return None


def quantized_position(k: int, scheme: QuantScheme) -> int:
    """Where input k lies in the quantizer's output: int4 orders each 8 inputs evens first, then odds."""
    if scheme.bits != 4:
        return k
    r = k % 8
    return k - r + (r % 2) * 4 + r // 2


def quantize_rows_function(rows: int, columns: int, scheme: QuantScheme):
    """A PrimFunc x fp32 [rows, columns] → (xq int8 [rows, columns], x_scale fp32 [rows, groups],
    correction int32 [rows, groups]); see the module's docstring."""
    from tvm.script import tirx as T

    group = scheme.group_for(columns)
    groups = columns // group
    offset = 8 if scheme.bits == 4 else 128
    int4 = scheme.bits == 4

    @T.prim_func(private=True, s_tir=True)  # a root block: RewriteDataflowReshape inspects one-input kernels
    def quantize_rows(x: T.Buffer((rows, columns), "float32"), xq: T.Buffer((rows, columns), "int8"),
                      x_scale: T.Buffer((rows, groups), "float32"), correction: T.Buffer((rows, groups), "int32")):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True, "edgepack.hand_written": True, "op_pattern": 8})
        with T.sblock("root"):
            for i, g in T.grid(rows, groups):
                peak = T.alloc_buffer((1,), "float32", scope="local")
                total = T.alloc_buffer((1,), "int32", scope="local")
                inverse = T.alloc_buffer((1,), "float32", scope="local")
                peak[0] = T.float32(0)
                for k in range(group):
                    peak[0] = T.max(peak[0], T.fabs(x[i, g * group + k]))
                x_scale[i, g] = peak[0] / T.float32(127)
                inverse[0] = T.Select(peak[0] > T.float32(0), T.float32(127) / peak[0], T.float32(0))
                total[0] = 0
                for k in range(group):
                    if int4:  # a Python bool: TVMScript keeps one branch
                        xq[i, g * group + k // 8 * 8 + k % 2 * 4 + k % 8 // 2] = T.Cast("int8", T.round(
                            x[i, g * group + k] * inverse[0]))
                        total[0] = total[0] + T.Cast("int32", xq[i, g * group + k // 8 * 8 + k % 2 * 4 + k % 8 // 2])
                    else:
                        xq[i, g * group + k] = T.Cast("int8", T.round(
                            x[i, g * group + k] * inverse[0]))
                        total[0] = total[0] + T.Cast("int32", xq[i, g * group + k])
                correction[i, g] = total[0] * -offset

    return quantize_rows


def integer_linear_function(rows: int, columns: int, out_features: int, scheme: QuantScheme):
    """A PrimFunc y fp32 [rows, out] from the quantizer's outputs and a weight interleaved by 16 lanes
    (`weights.block_matrix`), on `vpdpbusd`. Each parallel task owns one 32-row tile (2 vectors) and keeps
    two int32 chains per vector (low/high nibbles at int4, alternate loads at int8)."""
    from tvm.script import tirx as T

    intrinsic = ISAS["avx512_vnni"].intrinsic
    group = scheme.group_for(columns)
    groups, int4 = columns // group, scheme.bits == 4
    steps = group // 8  # per group and row vector: one load at int4, two at int8 (`unsupported` checks group % 8)
    stored_per_group = group // 2 if int4 else group
    stored, dtype = (columns // 2, "uint8") if int4 else (columns, "int8")
    vectors = tile_rows(LANES) // LANES
    tiles = -(-out_features // tile_rows(LANES))
    blocks = tiles * vectors
    # [byte b, row] → [row, byte b] in two steps: dwords (b, rows 4m..4m+3) gathered into 128-bit lane m (vpermd),
    # then the 4x4 bytes of each 128-bit lane transposed (vpshufb)
    dword_order = [b * 4 + m for m in range(4) for b in range(4)]
    byte_order = [m * 16 + b * 4 + j for m in range(4) for j in range(4) for b in range(4)]
    unrolled = steps <= 16

    @T.prim_func(private=True)
    def integer_linear(xq: T.Buffer((rows, columns), "int8"), x_scale: T.Buffer((rows, groups), "float32"),
                       correction: T.Buffer((rows, groups), "int32"),
                       q: T.Buffer((blocks, stored, LANES), dtype), scale: T.Buffer((blocks, groups, LANES), "float32"),
                       y: T.Buffer((rows, out_features), "float32")):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True, "edgepack.hand_written": True, "op_pattern": 8})
        for t in T.parallel(tiles):
            acc = T.alloc_buffer((vectors * LANES,), "float32", scope="local")
            dots = T.alloc_buffer((2 * vectors * LANES,), "int32", scope="local")
            for i in range(rows):
                for r in T.unroll(vectors):
                    acc[T.ramp(r * LANES, 1, LANES)] = T.broadcast(T.float32(0), LANES)
                for g in range(groups):
                    for r in T.unroll(2 * vectors):
                        dots[T.ramp(r * LANES, 1, LANES)] = T.broadcast(0, LANES)
                    for s in T.unroll(steps) if unrolled else T.serial(steps):
                        for r in T.unroll(vectors):
                            if int4:  # a Python bool: TVMScript keeps one branch. One load: low nibbles (even inputs) into chain 0, high (odd) into chain 1
                                for h in T.unroll(2):
                                    dots[T.ramp((2 * r + h) * LANES, 1, LANES)] = T.call_llvm_pure_intrin(
                                        T.llvm_lookup_intrinsic_id(intrinsic), dots[T.ramp((2 * r + h) * LANES, 1, LANES)],
                                        T.bitwise_and(T.shift_right(T.Shuffle([T.reinterpret(T.Shuffle([T.reinterpret(q.vload([t * vectors + r, g * stored_per_group + s * 4, 0], "uint8x64"), dtype="int32x16")], dword_order), dtype="uint8x64")], byte_order), T.broadcast(T.uint8(4 * h), 64)), T.broadcast(T.uint8(15), 64)),
                                        T.reinterpret(T.broadcast(T.reinterpret(xq.vload([i, g * group + s * 8 + h * 4], "int8x4"), dtype="int32"), LANES), dtype="int8x64"),
                                        dtype="int32x16")
                            else:  # two loads into the two chains, the weights' sign bit flipped (w + 128, unsigned)
                                for h in T.unroll(2):
                                    dots[T.ramp((2 * r + h) * LANES, 1, LANES)] = T.call_llvm_pure_intrin(
                                        T.llvm_lookup_intrinsic_id(intrinsic), dots[T.ramp((2 * r + h) * LANES, 1, LANES)],
                                        T.bitwise_xor(T.Shuffle([T.reinterpret(T.Shuffle([T.reinterpret(q.vload([t * vectors + r, g * stored_per_group + (2 * s + h) * 4, 0], "int8x64"), dtype="int32x16")], dword_order), dtype="uint8x64")], byte_order), T.broadcast(T.uint8(128), 64)),
                                        T.reinterpret(T.broadcast(T.reinterpret(xq.vload([i, g * group + (2 * s + h) * 4], "int8x4"), dtype="int32"), LANES), dtype="int8x64"),
                                        dtype="int32x16")
                    for r in T.unroll(vectors):
                        acc[T.ramp(r * LANES, 1, LANES)] = acc[T.ramp(r * LANES, 1, LANES)] + T.Cast("float32x16", (
                            dots[T.ramp(2 * r * LANES, 1, LANES)] + dots[T.ramp((2 * r + 1) * LANES, 1, LANES)]
                            + T.broadcast(correction[i, g], LANES))) * scale.vload([t * vectors + r, g, 0], "float32x16") * T.broadcast(x_scale[i, g], LANES)
                for r in T.unroll(vectors):
                    for lane in range(LANES):
                        if (t * vectors + r) * LANES + lane < out_features:
                            y[i, (t * vectors + r) * LANES + lane] = acc[r * LANES + lane]

    return integer_linear
