"""Winograd F(m x m, 3x3) for blocked one-group 3x3 stride-1 convolutions (issue #17).

A blocked convolution (edgepack.compiler.conv_layout, data [N, C/x, H, W, x]) chosen by `tile_for` becomes three
kernels instead of one direct convolution:

1. input transform: the padded input cut into overlapping (m+2)x(m+2) tiles, each as V = B^T d B, stored
   [alpha, alpha, tiles, C/x, x] (alpha = m + 2): the channel block stays the vector; scheduled here
   (schedule_input_transform), not by the generic heuristic;
2. one GEMM per tile position: M[a, b] = V[a, b] (tiles x C) @ U[a, b] (C x K), a block of K innermost in vectors
   (edgepack.compiler.schedules tiles it like a matmul: U is the weight it loads as vectors);
3. output transform: Y = A^T M A tile by tile into [N, K/y, OH, OW, y]; FuseOps fuses the bias, ReLU and
   residual add after it as it does after the direct convolution.

The weight transform U = G g G^T runs once here, in numpy (float64, stored float32), and U replaces the packed
weight in params.bin as [alpha, alpha, K/z, C/x, x, z] (transform_weight). The matrices are TVM's (`tvm.topi.nn.winograd_util`,
Barabasz et al.'s interpolation points). F(4,3) does 4x fewer multiplications in the GEMM than the direct
convolution but needs the transforms; which shapes gain is measured (docs/benchmarks.md, "Winograd").
"""

from __future__ import annotations

import numpy as np

from edgepack.compiler.relax_calls import CONV2D, op_name, static_shape

KERNEL = 3


#: the rule measured on ResNet-18-style shapes (docs/benchmarks.md, "Winograd"): below 64 channels the transforms cost
#: about what the GEMM saves; with 16-lane vectors (AVX-512) F(4,3) where it cuts the map into enough tiles for the
#: GEMM's rows, else F(2,3), whose transformed weights are 1.8x the direct ones instead of 4x (at 7x7 x 512 the GEMM
#: waits on memory); with narrower vectors (AVX2; NEON unmeasured) the GEMM is compute-bound and F(4,3) won everywhere
MIN_CHANNELS = 64
F4_MIN_TILES = 32
F2_MIN_CHANNELS = 128
WIDE_LANES = 16


def tile_for(channels_in: int, channels_out: int, height: int, width: int, lanes: int = WIDE_LANES) -> int:
    """The output tile m of F(m x m, 3x3) for one convolution's shape (batch 1) in blocks of `lanes` channels, 0 to
    keep the direct convolution."""
    channels = min(channels_in, channels_out)
    if channels < MIN_CHANNELS:
        return 0
    if lanes < WIDE_LANES or _tiles(height, 4) * _tiles(width, 4) >= F4_MIN_TILES:
        return 4
    return 2 if channels >= F2_MIN_CHANNELS else 0


def transform_matrices(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A [alpha, m], B [alpha, alpha], G [alpha, 3] of F(m x m, 3x3) in float64: the values behind TVM's
    `winograd_transform_matrices` (its const_matrix tensors are only for TE)."""
    from tvm.topi.nn import winograd_util

    points = winograd_util._interpolation_points(tile + KERNEL - 2)
    return winograd_util._cook_toom_convolution(points, tile, KERNEL)


def gemm_block(channels_out: int, lanes: int) -> int:
    """Output channels per GEMM block: two vectors where they divide the channels, else one."""
    return 2 * lanes if channels_out % (2 * lanes) == 0 else lanes


def transform_weight(packed: np.ndarray, tile: int) -> np.ndarray:
    """U = G g G^T of a packed blocked weight [O/y, C/x, 3, 3, x, y] as [alpha, alpha, O/z, C/x, x, z] float32, z =
    gemm_block: one GEMM block's weights contiguous (C x z floats), kept in cache while the GEMM sweeps the tiles
    (ResNet-18's 512-channel F(2,3) GEMM at 7x7 2x faster than with [alpha, alpha, C, O], the others equal)."""
    out_blocks, in_blocks, _, _, in_lanes, out_lanes = packed.shape
    g = packed.astype(np.float64).transpose(1, 4, 2, 3, 0, 5).reshape(in_blocks * in_lanes, KERNEL, KERNEL,
                                                                       out_blocks * out_lanes)
    _, _, G = transform_matrices(tile)
    u = np.einsum("ea,cabk,nb->enck", G, g, G)
    alpha = tile + KERNEL - 1
    block = gemm_block(out_blocks * out_lanes, out_lanes)
    u = u.reshape(alpha, alpha, in_blocks, in_lanes, -1, block).transpose(0, 1, 4, 2, 3, 5)
    return np.ascontiguousarray(u.astype(np.float32))


def _tiles(extent: int, tile: int) -> int:
    return -(-extent // tile)


def input_transform(data, tile: int, padding, out_h: int, out_w: int):
    """TE: V[a, b, p, C/x, x] = (B^T d B)[a, b] of tile p = (n, tile row, tile column) of the padded input
    (15-30% faster separable than as one 36-term sum, F(4,3) on ResNet-18's shapes)."""
    from tvm import te, topi
    from tvm.topi.nn.winograd_util import winograd_transform_matrices

    batch, blocks, height, width, lanes = (int(v) for v in data.shape)
    top, left, _, _ = (int(v) for v in padding)
    rows, cols = _tiles(out_h, tile), _tiles(out_w, tile)
    alpha = tile + KERNEL - 1
    bottom, right = rows * tile + KERNEL - 1 - height - top, cols * tile + KERNEL - 1 - width - left
    padded = topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0], name="pad_winograd")
    _, B, _ = winograd_transform_matrices(tile, KERNEL, str(data.dtype))
    shape = (alpha, alpha, batch * rows * cols, blocks, lanes)
    i, j = te.reduce_axis((0, alpha), name="i"), te.reduce_axis((0, alpha), name="j")
    columns = te.compute(  # B^T d: the two products one after the other, 12 multiply-adds per value instead of 36
        shape, lambda a, col, p, c, x: te.sum(
            B[i, a] * padded[p // (rows * cols), c, p // cols % rows * tile + i, p % cols * tile + col, x], axis=[i]),
        name="winograd_columns")
    return te.compute(shape, lambda a, b, p, c, x: te.sum(columns[a, j, p, c, x] * B[j, b], axis=[j]),
                      name="winograd_input")


def batched_gemm(transformed, weight):
    """TE: M[a, b, K/z, p, z] = sum over channels c of V[a, b, p, c] U[a, b, K/z, c, z] (transform_weight's layout)."""
    from tvm import te

    alpha, _, tiles, blocks, lanes = (int(v) for v in transformed.shape)
    out_blocks, block = int(weight.shape[2]), int(weight.shape[-1])
    outer, inner = te.reduce_axis((0, blocks), name="rc_outer"), te.reduce_axis((0, lanes), name="rc_inner")
    return te.compute(
        (alpha, alpha, out_blocks, tiles, block),
        lambda a, b, k, p, o: te.sum(transformed[a, b, p, outer, inner] * weight[a, b, k, outer, inner, o],
                                     axis=[outer, inner]),
        name="winograd_gemm")


def output_transform(product, tile: int, batch: int, out_h: int, out_w: int, lanes: int):
    """TE: the blocked output [N, K/y, OH, OW, y] of M tile by tile, Y = A^T M A."""
    from tvm import te
    from tvm.topi.nn.winograd_util import winograd_transform_matrices

    alpha, _, gemm_blocks, _, block = (int(v) for v in product.shape)
    per_block = block // lanes  # output blocks (y channels) per GEMM block (z channels)
    rows, cols = _tiles(out_h, tile), _tiles(out_w, tile)
    A, _, _ = winograd_transform_matrices(tile, KERNEL, str(product.dtype))
    a, b = te.reduce_axis((0, alpha), name="ra"), te.reduce_axis((0, alpha), name="rb")
    return te.compute(
        (batch, gemm_blocks * per_block, out_h, out_w, lanes),
        lambda n, k, y, x, o: te.sum(
            A[a, y % tile] * A[b, x % tile] * product[a, b, k // per_block, (n * rows + y // tile) * cols + x // tile,
                                                        k % per_block * lanes + o],
            axis=[a, b]),
        name="winograd_output")


def _applies(call) -> tuple[int, int, int, int, int] | None:
    """(C, K, OH, OW, channel block) of a blocked one-group 3x3 stride-1 dilation-1 float32 convolution, else None."""
    attrs = call.attrs
    if len(str(attrs.data_layout)) == 4 or int(attrs.groups) != 1:
        return None
    if [int(v) for v in attrs.strides] != [1, 1] or [int(v) for v in attrs.dilation] != [1, 1]:
        return None
    data, weight, out = static_shape(call.args[0]), static_shape(call.args[1]), static_shape(call)
    if data is None or weight is None or out is None or len(weight) != 6 or weight[2:4] != [KERNEL, KERNEL]:
        return None
    if any(str(expr.ty.dtype) != "float32" for expr in (call.args[0], call.args[1], call)):
        return None
    return data[1] * data[4], weight[0] * weight[5], out[2], out[3], data[4]


def _use_counts(function) -> dict:
    from tvm import relax

    counts: dict = {}

    @relax.expr_functor.visitor
    class _Count(relax.expr_functor.PyExprVisitor):
        def visit_var_(self, var):
            counts[var] = counts.get(var, 0) + 1

        def visit_dataflow_var_(self, var):
            counts[var] = counts.get(var, 0) + 1

    _Count().visit_expr(function.body)
    return counts


def use_winograd(module, params: list, n_inputs: int, choose=None) -> tuple[object, list, dict]:
    """Blocked 3x3 stride-1 convolutions of `main` for which `choose(C, K, OH, OW, lanes)` names a tile as Winograd kernels,
    their packed weights replaced by U (`choose` defaults to tile_for); returns (module, params, {weight name: tile}). Run after
    conv_layout.pack_weights, before conv_layout.legalize_blocked_convs (which takes the others)."""
    import tvm
    from tvm import relax

    choose = choose or tile_for
    function = module["main"]
    weights = list(function.params[n_inputs:])
    values = dict(zip(weights, params))
    counts = _use_counts(function)
    chosen: dict = {}  # weight var -> (tile, its transformed var)
    transformed: dict = {}
    for block in function.body.blocks:
        for binding in block.bindings:
            call = binding.value
            if op_name(call) != CONV2D or (shape := _applies(call)) is None:
                continue
            weight = call.args[1]
            tile = choose(*shape)
            if not tile or weight not in values or counts.get(weight, 0) != 1:
                continue
            u = transform_weight(values[weight].numpy(), tile)
            chosen[weight] = (tile, relax.Var(weight.name, relax.TensorType(list(u.shape), "float32")))
            transformed[weight] = tvm.runtime.tensor(u)
    if not chosen:
        return module, params, {}

    @relax.expr_functor.mutator
    class _Rewrite(relax.expr_functor.PyExprMutator):
        def visit_call_(self, call):
            if op_name(call) != CONV2D or call.args[1] not in chosen:
                return super().visit_call_(call)
            tile, weight = chosen[call.args[1]]
            data = self.visit_expr(call.args[0])
            batch, _, out_h, out_w, lanes = static_shape(call)
            v = self.builder_.emit_te(input_transform, data, tile, list(call.attrs.padding), out_h, out_w,
                                      primfunc_name_hint="winograd_input")
            m = self.builder_.emit_te(batched_gemm, v, weight, primfunc_name_hint="winograd_gemm")
            return self.builder_.call_te(output_transform, m, tile, batch, out_h, out_w, lanes,
                                         primfunc_name_hint="winograd_output")

    rewriter = _Rewrite(module)
    body = rewriter.visit_expr(function.body)
    new_params = [chosen[w][1] if w in chosen else w for w in weights]
    rewritten = relax.Function(list(function.params[:n_inputs]) + new_params, body, None, function.is_pure,
                               function.attrs, function.span)
    rewriter.builder_.update_func(module.get_global_var("main"), rewritten)
    new_values = [transformed[w] if w in chosen else values[w] for w in weights]
    return _epilogue_fusable(rewriter.builder_.get()), new_values, {w.name: chosen[w][0] for w in chosen}


#: TVM's op patterns: kOutEWiseFusable (element-wise ops after the kernel fused into its write-back), kOpaque
OUT_ELEMWISE_FUSABLE, OPAQUE = 4, 8


def _epilogue_fusable(module):
    """Output transforms marked like a convolution, so FuseOps fuses the bias, ReLU and residual add after them (TVM's
    pattern analysis calls A^T M A's three-factor reduction kCommReduce, which FuseOps fuses with nothing after it);
    input transforms scheduled here (schedule_input_transform), opaque to FuseOps."""
    from tvm import tirx

    from edgepack.compiler.schedules import HAND_WRITTEN

    for gvar, func in list(module.functions.items()):
        if isinstance(func, tirx.PrimFunc) and gvar.name_hint.startswith("winograd_output"):
            module[gvar] = func.with_attr("op_pattern", OUT_ELEMWISE_FUSABLE)
        elif isinstance(func, tirx.PrimFunc) and gvar.name_hint.startswith("winograd_input"):
            module[gvar] = schedule_input_transform(func).with_attrs(
                {"tirx.is_scheduled": True, "op_pattern": OPAQUE, HAND_WRITTEN: "winograd_input"})
    return module


def schedule_input_transform(func):
    """The input transform's schedule: per (tile, channel block), in parallel, the alpha x alpha tile transformed in
    registers, B's entries folded into constants, the padding read in place, the channel block one vector. The
    generic heuristic tiles each product on its own through memory: 5-25x slower on ResNet-18's shapes."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    output, columns = sch.get_sblock("winograd_input"), sch.get_sblock("winograd_columns")
    sch.compute_inline(sch.get_sblock("pad_winograd"))
    sch.compute_inline(sch.get_sblock("B"))
    a, b, tile, block, lane, j = sch.get_loops(output)
    sch.reorder(tile, block, a, b, j, lane)
    outer = sch.fuse(tile, block)
    sch.compute_at(columns, outer)
    ca, col, column_lane, i = sch.get_loops(columns)[1:]
    sch.reorder(ca, col, i, column_lane)
    for loop in (ca, col, i, a, b, j):
        sch.unroll(loop)
    sch.vectorize(column_lane)
    sch.vectorize(lane)
    sch.parallel(outer)
    sch.decompose_reduction(columns, i)
    sch.decompose_reduction(output, j)
    return sch.mod["main"]
