"""int8 matmuls and convolutions on the target's int8 dot-product instruction, weights packed once at build time.

`edgepack.compiler.integer_ops` turns QDQ chains into `matmul`/`conv2d(qx [- zx], qw, out_dtype=int32)`, which
TVM lowers to loops that widen both sides to int32 (`vpmulld` on x86): slower than fp32 FMA. On a target
whose `cpu_features` name an instruction in ISAS, this pass replaces each such op (weight an int8 parameter
used once, static shapes; conv2d with one group) with a hand-written kernel:

- AVX512-VNNI `vpdpbusd` (16 int32 lanes, uint8 x int8) or Armv8.2 `sdot` (4 lanes, int8 x int8): each
  lane += the dot product of 4 activations and 4 weights, without saturation. A matmul weight [K, N] is
  stored in params.bin as `[N/L, K/4, L, 4]`, a conv weight as `[O/L, KH, KW, I/4, L, 4]` (L lanes,
  zero-padded), and the kernel broadcasts 4 activation bytes to all lanes; a conv's input is made NHWC and
  padded with its zero point (a padded pixel is the real value 0);
- activations of the instruction's type enter as they are; the others are flipped (one XOR per 4 bytes:
  int8 → uint8 is +128, uint8 → int8 is -128). The zero point and that offset are folded into a
  per-output-channel correction computed at build time from the weights, `-(zx + offset) · Σ qw`, which
  initialises the accumulators, so the kernel's int32 result equals `Σ (qx - zx) · qw` exactly (the
  integer path's value).

A kernel keeps a tile of up to 4 rows (output pixels) x 8 column vectors in registers and parallelises over
tiles; it is marked scheduled (the heuristic CPU schedules and tuning leave it alone) and opaque (not fused
with its requantize, which stays an element-wise kernel over the int32 result). Ops it does not take keep
today's path, with the reason in the report.
"""

# no `from __future__ import annotations`: TVMScript reads the kernel's buffer annotations as objects
from dataclasses import dataclass, field

import numpy as np

from edgepack.compiler.schedules import HAND_WRITTEN

#: below this many multiply-adds a kernel stays single-threaded (as edgepack.compiler.schedules)
PARALLEL_MIN_WORK = 1 << 15
MATMUL = "relax.matmul"
CONV2D = "relax.nn.conv2d"
#: conv2d weight layouts the pass packs from (IHWO: edgepack.compiler.weight_layout stores one-group weights so)
CONV_WEIGHT_LAYOUTS = ("OIHW", "IHWO")


@dataclass(frozen=True)
class Isa:
    """A 4-deep int8 dot-product instruction: `lanes` int32 accumulators, activations read as `activation`."""

    name: str
    lanes: int
    intrinsic: str
    activation: str  # "uint8" (vpdpbusd: u8 x s8) or "int8" (sdot: s8 x s8)
    measured: bool  # its speed against fp32 measured on real hardware (docs/integer-execution.md)

    def offset(self, dtype: str) -> int:
        """What is added to an activation of `dtype` to make it the instruction's type (an XOR of the sign bits)."""
        if dtype == self.activation:
            return 0
        return 128 if self.activation == "uint8" else -128


#: cpu_features entry (kernel hwcap name) → its instruction
ISAS = {"avx512_vnni": Isa("vnni", 16, "llvm.x86.avx512.vpdpbusd.512", "uint8", measured=True),
        "asimddp": Isa("sdot", 4, "llvm.aarch64.neon.sdot.v4i32.v16i8", "int8", measured=False)}  # qemu only
KERNELS = {feature: isa.name for feature, isa in ISAS.items()}


@dataclass
class DotReport:
    """Which integer matmuls run on the dot-product kernel and why others do not."""

    feature: str | None = None
    kernels: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"feature": self.feature, "kernels": len(self.kernels), "kernel_ops": list(self.kernels),
                **({"skipped": dict(self.skipped)} if self.skipped else {})}


def dot_feature(target) -> str | None:
    """The int8 dot-product feature of a TargetSpec this pass has a kernel for, or None."""
    return next((feature for feature in KERNELS if target.supports(feature)), None)


def pack_weight(weight: np.ndarray, lanes: int = 16) -> np.ndarray:
    """int8 [K, N] → [ceil(N/lanes), ceil(K/4), lanes, 4], zero-padded (the layout vpdpbusd/sdot read)."""
    k, n = weight.shape
    padded = np.zeros((-(-k // 4) * 4, -(-n // lanes) * lanes), np.int8)
    padded[:k, :n] = weight
    return np.ascontiguousarray(padded.reshape(padded.shape[0] // 4, 4, padded.shape[1] // lanes, lanes).transpose(2, 0, 3, 1))


def column_correction(weight: np.ndarray, zero_point: int, offset: int, lanes: int = 16) -> np.ndarray:
    """int32 [ceil(N/lanes)*lanes]: -(zx + offset) · Σ_k w[k, n], the accumulators' initial values (offset:
    Isa.offset, what turns the activations into the instruction's type)."""
    n = weight.shape[1]
    correction = np.zeros(-(-n // lanes) * lanes, np.int64)
    correction[:n] = -(zero_point + offset) * weight.astype(np.int64).sum(axis=0)
    if np.abs(correction).max(initial=0) >= 2**31:
        raise ValueError("the zero-point correction overflows int32")
    return correction.astype(np.int32)


#: accumulator vectors a kernel tile keeps in registers (of 32 on AVX-512 and AArch64; the rest hold operands)
TILE_VECTORS = 16


def _tiles(m: int, blocks: int) -> tuple[int, int]:
    """(rows, column vectors) of the register tile: divisors of m and blocks, at most 8 each, as many accumulators
    as fit TILE_VECTORS (independent vpdpbusd/sdot chains hide the instruction's latency), squarest first."""
    options = [(r, c) for r in range(1, 9) if m % r == 0 for c in range(1, 9) if blocks % c == 0 and r * c <= TILE_VECTORS]
    return max(options, key=lambda rc: (rc[0] * rc[1], -abs(rc[0] - rc[1])))


def dense_kernel(isa: Isa, m: int, k: int, n: int, dtype: str):
    """The PrimFunc C[m, N'] = Z + A[m, k] · W, A of `dtype` (int8/uint8), W packed by pack_weight(lanes=isa.lanes)."""
    from tvm.script import tirx as T

    lanes, kq, kt = isa.lanes, k // 4, k % 4
    blocks = -(-n // lanes)
    rows, columns = _tiles(m, blocks)
    tiles, per_row = (m // rows) * (blocks // columns), blocks // columns
    flip = -2139062144 if isa.offset(dtype) else 0  # 0x80808080: ±128 on each of 4 bytes
    offset = isa.offset(dtype)
    parallel = m * k * n >= PARALLEL_MIN_WORK and tiles > 1
    intrinsic, avec, wvec, accvec = isa.intrinsic, f"{isa.activation}x{4 * lanes}", f"int8x{4 * lanes}", f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def kernel(A: T.Buffer((m, k), dtype), W: T.Buffer((blocks, kq + (1 if kt else 0), lanes, 4), "int8"),
               Z: T.Buffer((blocks * lanes,), "int32"), C: T.Buffer((m, blocks * lanes), "int32")):
        T.func_attr({"tirx.noalias": True})
        for tile in T.parallel(tiles) if parallel else T.serial(tiles):
            acc = T.alloc_buffer((rows * columns * lanes,), "int32", scope="local")
            for r in T.unroll(rows):
                for c in T.unroll(columns):
                    acc[T.ramp((r * columns + c) * lanes, 1, lanes)] = Z[T.ramp(((tile % per_row) * columns + c) * lanes, 1, lanes)]
            for q in range(kq):
                for r in T.unroll(rows):
                    word = T.reinterpret(A.vload([(tile // per_row) * rows + r, q * 4], dtype + "x4"), dtype="int32")
                    for c in T.unroll(columns):
                        acc[T.ramp((r * columns + c) * lanes, 1, lanes)] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id(intrinsic), acc[T.ramp((r * columns + c) * lanes, 1, lanes)],
                            T.reinterpret(T.broadcast(T.bitwise_xor(word, flip), lanes), dtype=avec),
                            W.vload([(tile % per_row) * columns + c, q, 0, 0], wvec), dtype=accvec)
            if kt > 0:  # the last 1-3 reduction steps: bytes gathered one by one (weights are zero beyond k)
                for r in T.unroll(rows):
                    word = T.int32(0)
                    for j in T.unroll(kt):
                        word = word + T.shift_left(T.bitwise_and(
                            T.cast(A[(tile // per_row) * rows + r, kq * 4 + j], "int32") + offset, 255), j * 8)
                    for c in T.unroll(columns):
                        acc[T.ramp((r * columns + c) * lanes, 1, lanes)] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id(intrinsic), acc[T.ramp((r * columns + c) * lanes, 1, lanes)],
                            T.reinterpret(T.broadcast(word, lanes), dtype=avec),
                            W.vload([(tile % per_row) * columns + c, kq, 0, 0], wvec), dtype=accvec)
            for r in T.unroll(rows):
                for c in T.unroll(columns):
                    C[(tile // per_row) * rows + r, T.ramp(((tile % per_row) * columns + c) * lanes, 1, lanes)] = acc[
                        T.ramp((r * columns + c) * lanes, 1, lanes)]

    return _hand_written(kernel, isa)


def _hand_written(kernel, isa: Isa):
    """Scheduled by hand (the heuristic and tuning leave it alone); opaque: FuseOps does not merge it."""
    return kernel.without_attr("global_symbol").with_attrs({"tirx.is_scheduled": True, "op_pattern": 8,
                                                            HAND_WRITTEN: isa.name})


def vnni_dense(m: int, k: int, n: int, signed: bool):
    """dense_kernel on AVX512-VNNI for int8 (`signed`) or uint8 activations."""
    return dense_kernel(ISAS["avx512_vnni"], m, k, n, "int8" if signed else "uint8")


def pack_conv_weight(weight: np.ndarray, lanes: int = 16) -> np.ndarray:
    """int8 OIHW → [ceil(O/lanes), KH, KW, ceil(I/4), lanes, 4], zero-padded (4 input channels per step)."""
    o, i, kh, kw = weight.shape
    padded = np.zeros((-(-o // lanes) * lanes, -(-i // 4) * 4, kh, kw), np.int8)
    padded[:o, :i] = weight
    blocked = padded.reshape(padded.shape[0] // lanes, lanes, padded.shape[1] // 4, 4, kh, kw)
    return np.ascontiguousarray(blocked.transpose(0, 4, 5, 2, 1, 3))


def conv2d_kernel(isa: Isa, data: tuple, kernel_hw: tuple, out_hw: tuple, out_blocks: int, stride: tuple,
                  dilation: tuple, dtype: str):
    """The PrimFunc C[n, oh, ow, O'] = Z + Σ A[n, ih, iw, c] · W for an NHWC input of `dtype` already padded (spatially
    with the zero point, channels to a multiple of 4) and W packed by pack_conv_weight(lanes=isa.lanes)."""
    from tvm.script import tirx as T

    lanes = isa.lanes
    batch, height, width, channels = data
    kh, kw = kernel_hw
    oh, ow = out_hw
    sh, sw = stride
    dh, dw = dilation
    cq = channels // 4
    rows, columns = _tiles(ow, out_blocks)
    per_row, per_line = out_blocks // columns, (ow // rows) * (out_blocks // columns)
    tiles = batch * oh * per_line
    flip = -2139062144 if isa.offset(dtype) else 0
    parallel = tiles > 1 and batch * oh * ow * out_blocks * lanes * kh * kw * channels >= PARALLEL_MIN_WORK
    intrinsic, avec, wvec, accvec = isa.intrinsic, f"{isa.activation}x{4 * lanes}", f"int8x{4 * lanes}", f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def kernel(A: T.Buffer((batch, height, width, channels), dtype), W: T.Buffer((out_blocks, kh, kw, cq, lanes, 4), "int8"),
               Z: T.Buffer((out_blocks * lanes,), "int32"), C: T.Buffer((batch, oh, ow, out_blocks * lanes), "int32")):
        T.func_attr({"tirx.noalias": True})
        for tile in T.parallel(tiles) if parallel else T.serial(tiles):
            acc = T.alloc_buffer((rows * columns * lanes,), "int32", scope="local")
            for r in T.unroll(rows):
                for c in T.unroll(columns):
                    acc[T.ramp((r * columns + c) * lanes, 1, lanes)] = Z[T.ramp(((tile % per_row) * columns + c) * lanes, 1, lanes)]
            for y in range(kh):
                for x in range(kw):
                    for q in range(cq):
                        for r in T.unroll(rows):
                            word = T.reinterpret(A.vload([tile // (oh * per_line), (tile // per_line) % oh * sh + y * dh,
                                                          ((tile % per_line) // per_row * rows + r) * sw + x * dw, q * 4],
                                                         dtype + "x4"), dtype="int32")
                            for c in T.unroll(columns):
                                acc[T.ramp((r * columns + c) * lanes, 1, lanes)] = T.call_llvm_pure_intrin(
                                    T.llvm_lookup_intrinsic_id(intrinsic), acc[T.ramp((r * columns + c) * lanes, 1, lanes)],
                                    T.reinterpret(T.broadcast(T.bitwise_xor(word, flip), lanes), dtype=avec),
                                    W.vload([(tile % per_row) * columns + c, y, x, q, 0, 0], wvec), dtype=accvec)
            for r in T.unroll(rows):
                for c in T.unroll(columns):
                    C[tile // (oh * per_line), (tile // per_line) % oh, (tile % per_line) // per_row * rows + r,
                      T.ramp(((tile % per_row) * columns + c) * lanes, 1, lanes)] = acc[T.ramp((r * columns + c) * lanes, 1, lanes)]

    return _hand_written(kernel, isa)


def vnni_conv2d(data: tuple, kernel_hw: tuple, out_hw: tuple, out_blocks: int, stride: tuple, dilation: tuple, signed: bool):
    """conv2d_kernel on AVX512-VNNI for int8 (`signed`) or uint8 activations."""
    return conv2d_kernel(ISAS["avx512_vnni"], data, kernel_hw, out_hw, out_blocks, stride, dilation, "int8" if signed else "uint8")


def _op_name(expr) -> str | None:
    from tvm import relax
    from tvm.ir import Op

    if isinstance(expr, relax.Call) and isinstance(expr.op, Op):
        return expr.op.name
    return None


def _static(expr) -> list[int] | None:
    try:
        return [int(v) for v in expr.ty.shape]
    except (TypeError, ValueError, AttributeError):
        return None


def _activation(value, bindings) -> tuple[object, int]:
    """(uint8/int8 activation, zero point) of a matmul's input: the tensor itself, or `astype(q, int16) - zx`."""
    from tvm.ir.expr import Constant

    if str(value.ty.dtype) in ("int8", "uint8"):
        return value, 0
    node = bindings.get(value, value)
    if _op_name(node) == "relax.subtract" and isinstance(node.args[1], Constant):
        cast = bindings.get(node.args[0], node.args[0])
        if _op_name(cast) == "relax.astype" and str(cast.args[0].ty.dtype) in ("int8", "uint8"):
            return cast.args[0], int(node.args[1].value.numpy())
    raise ValueError(f"activation dtype {value.ty.dtype} is not int8/uint8 (or int16 = int8/uint8 - zero point)")


def _candidate(value, weights: set, bindings: dict):
    """(kind, activation, zero point, weight) of an integer matmul/conv2d the kernels take; raises ValueError why not."""
    kind = {MATMUL: "matmul", CONV2D: "conv2d"}[_op_name(value)]
    weight, rank = value.args[1], 2 if kind == "matmul" else 4
    if weight not in weights or str(weight.ty.dtype) != "int8" or len(_static(weight) or []) != rank:
        raise ValueError(f"its weight is not a {rank}-D int8 parameter")
    shape = _static(value.args[0])
    if shape is None or len(shape) < 2:
        raise ValueError("its activation's shape is not static")
    if kind == "conv2d":
        attrs = value.attrs
        if int(attrs.groups) != 1:
            raise ValueError("grouped or depthwise convolution (one group only)")
        if (str(attrs.data_layout), str(attrs.out_layout)) != ("NCHW", "NCHW") or str(attrs.kernel_layout) not in CONV_WEIGHT_LAYOUTS:
            raise ValueError(f"layout {attrs.data_layout}/{attrs.kernel_layout}")
        if _static(value) is None:
            raise ValueError("its output shape is not static")
    return (kind, *_activation(value.args[0], bindings), weight)


def _candidates(function, n_inputs: int) -> tuple[dict, dict]:
    """({binding var: (kind, activation, zero point, weight param)}, {weight name: why not})."""
    from tvm import relax

    weights = set(function.params[n_inputs:])
    bindings, uses, found, skipped = {}, {var: 0 for var in weights}, {}, {}

    @relax.expr_functor.visitor
    class _Visit(relax.expr_functor.PyExprVisitor):
        def visit_var_(self, var):
            if var in uses:
                uses[var] += 1

        def visit_var_binding_(self, binding):
            bindings[binding.var] = binding.value
            value = binding.value
            if _op_name(value) in (MATMUL, CONV2D) and str(value.attrs.out_dtype) == "int32":
                try:
                    found[binding.var] = _candidate(value, weights, bindings)
                except ValueError as why:
                    skipped[getattr(value.args[1], "name", str(binding.var.name))] = str(why)
            self.visit_expr(value)

    _Visit().visit_expr(function.body)
    for var, (_, _, _, weight) in list(found.items()):
        if uses[weight] != 1:
            skipped[weight.name] = "its weight is used by more than one op"
            del found[var]
    return found, skipped


def _packed(isa: Isa, kind: str, weight: np.ndarray, layout: str | None, zero_point: int, dtype: str):
    """(packed weight, correction) for a matmul [K, N] or conv2d (OIHW, or IHWO as edgepack.compiler.weight_layout stores it)."""
    offset = isa.offset(dtype)
    if kind == "matmul":
        return pack_weight(weight, isa.lanes), column_correction(weight, zero_point, offset, isa.lanes)
    if layout == "IHWO":
        weight = weight.transpose(3, 0, 1, 2)
    return (pack_conv_weight(weight, isa.lanes),
            column_correction(weight.reshape(weight.shape[0], -1).T, zero_point, offset, isa.lanes))


def use_dot_kernels(module, params: list, feature: str | None, report: DotReport | None = None):
    """Replace `main`'s integer matmuls and convolutions with the `feature` dot-product kernels; returns (module, params)."""
    import tvm
    from tvm import relax

    from edgepack.compiler.relax_params import input_count

    report = report if report is not None else DotReport()
    report.feature = feature
    if feature not in ISAS:
        return module, params
    isa = ISAS[feature]
    function = module["main"]
    n_inputs = input_count(function)
    found, report.skipped = _candidates(function, n_inputs)
    if not found:
        return module, params
    index_of = {var: i for i, var in enumerate(function.params[n_inputs:])}
    calls = {var: value for var, value in _bindings(function).items() if var in found}
    values, new_params, extra, extra_values = list(params), list(function.params), [], []
    plans = {}
    for var, (kind, activation, zero_point, weight) in found.items():
        dtype = str(activation.ty.dtype)
        layout = str(calls[var].attrs.kernel_layout) if kind == "conv2d" else None
        try:
            packed, correction = _packed(isa, kind, values[index_of[weight]].numpy(), layout, zero_point, dtype)
        except ValueError as why:
            report.skipped[weight.name] = str(why)
            continue
        values[index_of[weight]] = tvm.runtime.tensor(packed)
        packed_var = relax.Var(weight.name, relax.TensorType(list(packed.shape), "int8"))
        new_params[n_inputs + index_of[weight]] = packed_var
        correction_var = relax.Var(f"{weight.name}_zero_point_correction", relax.TensorType([correction.size], "int32"))
        extra.append(correction_var)
        extra_values.append(tvm.runtime.tensor(correction))
        plans[var] = (kind, calls[var], activation, zero_point, packed_var, correction_var, isa)
        report.kernels.append(f"{kind} {weight.name}")
    if not plans:
        return module, params

    @relax.expr_functor.mutator
    class _Rewrite(relax.expr_functor.PyExprMutator):
        def visit_var_binding_(self, binding):
            plan = plans.get(binding.var)
            if plan is None:
                return super().visit_var_binding_(binding)
            emit = _emit_conv2d if plan[0] == "conv2d" else _emit_matmul
            value = emit(self.builder_, plan, self.visit_expr(plan[2]))
            self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(value)))

    rewriter = _Rewrite(module)
    body = rewriter.visit_expr(function.body)
    module = rewriter.builder_.get()  # a new module: the caller's is unchanged; it holds the kernels added
    module["main"] = relax.Function(new_params + extra, body, None, function.is_pure, function.attrs, function.span)
    module = relax.transform.DeadCodeElimination(["main"])(module)
    return module, values + extra_values


def _bindings(function) -> dict:
    from tvm import relax

    return {b.var: b.value for block in function.body.blocks for b in block.bindings if isinstance(b, relax.VarBinding)}


def _emit_matmul(builder, plan, x):
    """[..., K] x packed [K, N] → int32 [..., N] through the dense kernel."""
    from tvm import relax

    _, call, activation, _, packed_var, correction_var, isa = plan
    shape, n, lanes = _static(activation), _static(call)[-1], isa.lanes
    rows, k = int(np.prod(shape[:-1])), shape[-1]
    kernel = builder.add_func(dense_kernel(isa, rows, k, n, str(activation.ty.dtype)), f"int8_dot_dense_{isa.name}")
    if len(shape) != 2:
        x = builder.emit(relax.op.reshape(x, [rows, k]))
    out = builder.emit(relax.call_tir(kernel, [x, packed_var, correction_var],
                                      relax.TensorType([rows, -(-n // lanes) * lanes], "int32")))
    if n % lanes:
        out = builder.emit(relax.op.strided_slice(out, axes=[1], begin=[0], end=[n]))
    return relax.op.reshape(out, [*shape[:-1], n]) if len(shape) != 2 else out


def _emit_conv2d(builder, plan, x):
    """NCHW x packed weight → int32 NCHW: the input padded with its zero point and made NHWC, the kernel, back to NCHW."""
    from tvm import relax

    _, call, activation, zero_point, packed_var, correction_var, isa = plan
    attrs, lanes = call.attrs, isa.lanes
    batch, channels, _, _ = _static(activation)
    _, out_channels, oh, ow = _static(call)
    top, left, bottom, right = (int(p) for p in attrs.padding)
    blocks = -(-out_channels // lanes)
    x = builder.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
    x = builder.emit(relax.op.nn.pad(x, [0, 0, top, bottom, left, right, 0, 0], pad_value=float(zero_point)))
    if channels % 4:  # weights are zero there: any value works
        x = builder.emit(relax.op.nn.pad(x, [0, 0, 0, 0, 0, 0, 0, 4 - channels % 4], pad_value=float(zero_point)))
    packed_shape = _static(packed_var)
    kernel = builder.add_func(conv2d_kernel(isa, tuple(_static(x)), tuple(packed_shape[1:3]), (oh, ow), blocks,
                                            tuple(int(v) for v in attrs.strides), tuple(int(v) for v in attrs.dilation),
                                            str(activation.ty.dtype)), f"int8_dot_conv2d_{isa.name}")
    out = builder.emit(relax.call_tir(kernel, [x, packed_var, correction_var],
                                      relax.TensorType([batch, oh, ow, blocks * lanes], "int32")))
    if out_channels % lanes:
        out = builder.emit(relax.op.strided_slice(out, axes=[3], begin=[0], end=[out_channels]))
    return relax.op.permute_dims(out, [0, 3, 1, 2])
