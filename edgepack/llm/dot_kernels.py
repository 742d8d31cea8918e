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
    correction int32 [rows, groups]); see the module's docstring. Vectorised: 8 or 16 inputs at a time (the widest
    that divides the group), each group's peak and sum reduced across lanes by halving shuffles."""
    from tvm import tirx as tir
    from tvm.script import tirx as T

    group = scheme.group_for(columns)
    groups = columns // group
    offset = 8 if scheme.bits == 4 else 128
    width = 16 if group % 16 == 0 else 8  # `unsupported` checks group % 8
    chunks = group // width
    # int4: each 8 inputs stored evens first, then odds (`quantized_position`)
    order = [c + (j % 4) * 2 + j // 4 for c in range(0, width, 8) for j in range(8)] if scheme.bits == 4 else list(range(width))

    def lanes_reduced(vector, combine):
        """combine over the lanes of a vector, halving it with shuffles: a scalar."""
        size = width
        while size > 1:
            size //= 2
            vector = combine(tir.Shuffle([vector], list(range(size))), tir.Shuffle([vector], list(range(size, 2 * size))))
        return vector

    def chunk(x, i, g, c):
        return x.vload([i, g * group + c * width], f"float32x{width}")

    def peak(x, i, g):
        vector = tir.abs(chunk(x, i, g, 0))
        for c in range(1, chunks):
            vector = tir.max(vector, tir.abs(chunk(x, i, g, c)))
        return lanes_reduced(vector, tir.max)

    def quantized(x, i, g, c, inverse):
        ordered = tir.Shuffle([chunk(x, i, g, c)], order)
        return tir.Cast(f"int8x{width}", tir.round(ordered * tir.Broadcast(inverse, width)))

    def total(xq, i, g):
        vector = tir.Cast(f"int32x{width}", xq.vload([i, g * group], f"int8x{width}"))
        for c in range(1, chunks):
            vector = vector + tir.Cast(f"int32x{width}", xq.vload([i, g * group + c * width], f"int8x{width}"))
        return lanes_reduced(vector, lambda a, b: a + b)

    @T.prim_func(private=True, s_tir=True)  # a root block: RewriteDataflowReshape inspects one-input kernels
    def quantize_rows(x: T.Buffer((rows, columns), "float32"), xq: T.Buffer((rows, columns), "int8"),
                      x_scale: T.Buffer((rows, groups), "float32"), correction: T.Buffer((rows, groups), "int32")):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True, "edgepack.hand_written": True, "op_pattern": 8})
        with T.sblock("root"):
            for i, g in T.grid(rows, groups):
                top = T.alloc_buffer((1,), "float32", scope="local")
                inverse = T.alloc_buffer((1,), "float32", scope="local")
                top[0] = peak(x, i, g)
                x_scale[i, g] = top[0] / T.float32(127)
                inverse[0] = T.Select(top[0] > T.float32(0), T.float32(127) / top[0], T.float32(0))
                for c in T.unroll(chunks):
                    xq[i, T.ramp(g * group + c * width, 1, width)] = quantized(x, i, g, c, inverse[0])
                correction[i, g] = total(xq, i, g) * -offset

    return quantize_rows


def integer_linear_function(rows: int, columns: int, out_features: int, scheme: QuantScheme):
    """A PrimFunc y fp32 [rows, out] from the quantizer's outputs and a weight interleaved by 16 lanes
    (`weights.block_matrix`), on `vpdpbusd`. Each parallel task owns one 32-row tile (2 vectors); per group and
    vector two int32 chains (low/high nibbles at int4, alternate loads at int8) are one expression, folded into the
    fp32 accumulator once per group: nothing is stored between the `vpdpbusd`s, so LLVM keeps the chains in
    registers and shares each shuffled int4 load between its two nibbles."""
    from tvm import tirx as tir
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

    def row_major(q, block, byte):
        """The 64-byte load of 4 stored bytes x 16 rows at (block, byte), made row-major (4 bytes per int32 lane)."""
        loaded = tir.reinterpret("int32x16", q.vload([block, byte, 0], f"{dtype}x64"))
        return tir.Shuffle([tir.reinterpret("uint8x64", tir.Shuffle([loaded], dword_order))], byte_order)

    def activation(xq, i, k):
        """xq[i, k..k+3] broadcast to every int32 lane."""
        return tir.reinterpret("int8x64", tir.Broadcast(tir.reinterpret("int32", xq.vload([i, k], "int8x4")), LANES))

    def group_sum(q, xq, i, g, block):
        """Σ over the group of w · xq, per row of the vector (int32x16): two vpdpbusd chains, added."""
        chains = [tir.Broadcast(tir.const(0, "int32"), LANES) for _ in range(2)]
        for step in range(steps):
            for h in range(2):
                if int4:  # one load: low nibbles (even inputs) into chain 0, high (odd) into chain 1
                    weight = tir.bitwise_and(tir.shift_right(row_major(q, block, g * stored_per_group + step * 4),
                                                             tir.Broadcast(tir.const(4 * h, "uint8"), 64)),
                                             tir.Broadcast(tir.const(15, "uint8"), 64))
                    x = activation(xq, i, g * group + step * 8 + h * 4)
                else:  # two loads, the weights' sign bit flipped (w + 128, unsigned)
                    weight = tir.bitwise_xor(row_major(q, block, g * stored_per_group + (2 * step + h) * 4),
                                             tir.Broadcast(tir.const(128, "uint8"), 64))
                    x = activation(xq, i, g * group + (2 * step + h) * 4)
                chains[h] = tir.call_llvm_pure_intrin("int32x16", intrinsic, chains[h], weight, x)
        return chains[0] + chains[1]

    @T.prim_func(private=True)
    def integer_linear(xq: T.Buffer((rows, columns), "int8"), x_scale: T.Buffer((rows, groups), "float32"),
                       correction: T.Buffer((rows, groups), "int32"),
                       q: T.Buffer((blocks, stored, LANES), dtype), scale: T.Buffer((blocks, groups, LANES), "float32"),
                       y: T.Buffer((rows, out_features), "float32")):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True, "edgepack.hand_written": True, "op_pattern": 8})
        for t in T.parallel(tiles):
            acc = T.alloc_buffer((vectors * LANES,), "float32", scope="local")
            for i in range(rows):
                for r in T.unroll(vectors):
                    acc[T.ramp(r * LANES, 1, LANES)] = T.broadcast(T.float32(0), LANES)
                for g in range(groups):
                    for r in T.unroll(vectors):
                        acc[T.ramp(r * LANES, 1, LANES)] = acc[T.ramp(r * LANES, 1, LANES)] + T.Cast("float32x16", (
                            group_sum(q, xq, i, g, t * vectors + r) + T.broadcast(correction[i, g], LANES))) * scale.vload(
                            [t * vectors + r, g, 0], "float32x16") * T.broadcast(x_scale[i, g], LANES)
                for r in T.unroll(vectors):
                    for lane in range(LANES):
                        if (t * vectors + r) * LANES + lane < out_features:
                            y[i, (t * vectors + r) * LANES + lane] = acc[r * LANES + lane]

    return integer_linear
