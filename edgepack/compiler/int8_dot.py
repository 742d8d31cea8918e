"""int8 matmuls on the target's int8 dot-product instruction, weights packed once at build time.

`edgepack.compiler.integer_ops` turns QDQ matmuls into `matmul(qx [- zx], qw, out_dtype=int32)`, which
TVM lowers to loops that widen both sides to int32 (`vpmulld` on x86): slower than fp32 FMA. On a target
whose `cpu_features` name an instruction listed in KERNELS, this pass replaces each such matmul (weight a
2-D int8 parameter used once, static shapes) with a hand-written kernel:

- AVX512-VNNI `vpdpbusd`: 16 int32 lanes, each += the dot product of 4 uint8 activations and 4 int8
  weights, without saturation. The weight [K, N] is stored in params.bin as `[N/16, K/4, 16, 4]`
  (zero-padded; one 64-byte vector per 16 output columns x 4 reduction steps) and the kernel broadcasts
  4 activation bytes to all lanes;
- uint8 activations enter as they are; int8 ones are flipped to uint8 (`x + 128`, one XOR per 4 bytes).
  The activation zero point and that offset are folded into a per-column correction computed at build
  time from the weights, `-(zx + offset) · Σ_k qw[k, n]`, which initialises the accumulators, so the
  kernel's int32 result equals `Σ_k (qx - zx) · qw` exactly (the integer path's value).

The kernel keeps a tile of up to 4 rows x 8 column vectors in registers and parallelises over tiles;
it is marked scheduled (the heuristic CPU schedules leave it alone) and opaque (not fused with its
requantize, which stays an element-wise kernel over the int32 result). Matmuls it does not take keep
today's path, with the reason in the report.
"""

# no `from __future__ import annotations`: TVMScript reads the kernel's buffer annotations as objects
from dataclasses import dataclass, field

import numpy as np

#: cpu_features entry (kernel hwcap name) → kernel for it
KERNELS = {"avx512_vnni": "vnni"}
#: below this many multiply-adds the kernel stays single-threaded (as edgepack.compiler.schedules)
PARALLEL_MIN_WORK = 1 << 15
MATMUL = "relax.matmul"


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


def pack_weight(weight: np.ndarray) -> np.ndarray:
    """int8 [K, N] → [ceil(N/16), ceil(K/4), 16, 4], zero-padded (the layout vpdpbusd reads)."""
    k, n = weight.shape
    padded = np.zeros((-(-k // 4) * 4, -(-n // 16) * 16), np.int8)
    padded[:k, :n] = weight
    return np.ascontiguousarray(padded.reshape(padded.shape[0] // 4, 4, padded.shape[1] // 16, 16).transpose(2, 0, 3, 1))


def column_correction(weight: np.ndarray, zero_point: int, signed: bool) -> np.ndarray:
    """int32 [ceil(N/16)*16]: -(zx + 128 if int8 activations) · Σ_k w[k, n]; the accumulators' initial values."""
    n = weight.shape[1]
    correction = np.zeros(-(-n // 16) * 16, np.int64)
    correction[:n] = -(zero_point + (128 if signed else 0)) * weight.astype(np.int64).sum(axis=0)
    if np.abs(correction).max(initial=0) >= 2**31:
        raise ValueError("the zero-point correction overflows int32")
    return correction.astype(np.int32)


def _tiles(m: int, blocks: int) -> tuple[int, int]:
    rows = max(d for d in range(1, 5) if m % d == 0)
    columns = max(d for d in range(1, 9 if rows == 1 else 5) if blocks % d == 0)
    return rows, columns


def vnni_dense(m: int, k: int, n: int, signed: bool):
    """The PrimFunc C[m, N16] = Z + A[m, k] · W for uint8 (or int8, flipped) A and W packed by pack_weight."""
    from tvm.script import tirx as T

    kq, kt = k // 4, k % 4
    blocks = -(-n // 16)
    rows, columns = _tiles(m, blocks)
    tiles, per_row = (m // rows) * (blocks // columns), blocks // columns
    adtype = "int8" if signed else "uint8"
    flip = -2139062144 if signed else 0  # 0x80808080: +128 on each of 4 int8 bytes → uint8
    offset = 128 if signed else 0
    parallel = m * k * n >= PARALLEL_MIN_WORK and tiles > 1

    @T.prim_func(s_tir=True)
    def kernel(A: T.Buffer((m, k), adtype), W: T.Buffer((blocks, kq + (1 if kt else 0), 16, 4), "int8"),
               Z: T.Buffer((blocks * 16,), "int32"), C: T.Buffer((m, blocks * 16), "int32")):
        T.func_attr({"tirx.noalias": True})
        for tile in T.parallel(tiles) if parallel else T.serial(tiles):
            acc = T.alloc_buffer((rows * columns * 16,), "int32", scope="local")
            for r in T.unroll(rows):
                for c in T.unroll(columns):
                    acc[T.ramp((r * columns + c) * 16, 1, 16)] = Z[T.ramp(((tile % per_row) * columns + c) * 16, 1, 16)]
            for q in range(kq):
                for r in T.unroll(rows):
                    word = T.reinterpret(A.vload([(tile // per_row) * rows + r, q * 4], adtype + "x4"), dtype="int32")
                    for c in T.unroll(columns):
                        acc[T.ramp((r * columns + c) * 16, 1, 16)] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), acc[T.ramp((r * columns + c) * 16, 1, 16)],
                            T.reinterpret(T.broadcast(T.bitwise_xor(word, flip), 16), dtype="uint8x64"),
                            W.vload([(tile % per_row) * columns + c, q, 0, 0], "int8x64"), dtype="int32x16")
            if kt > 0:  # the last 1-3 reduction steps: bytes gathered one by one (weights are zero beyond k)
                for r in T.unroll(rows):
                    word = T.int32(0)
                    for j in T.unroll(kt):
                        word = word + T.shift_left(T.cast(A[(tile // per_row) * rows + r, kq * 4 + j], "int32") + offset, j * 8)
                    for c in T.unroll(columns):
                        acc[T.ramp((r * columns + c) * 16, 1, 16)] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), acc[T.ramp((r * columns + c) * 16, 1, 16)],
                            T.reinterpret(T.broadcast(word, 16), dtype="uint8x64"),
                            W.vload([(tile % per_row) * columns + c, kq, 0, 0], "int8x64"), dtype="int32x16")
            for r in T.unroll(rows):
                for c in T.unroll(columns):
                    C[(tile // per_row) * rows + r, T.ramp(((tile % per_row) * columns + c) * 16, 1, 16)] = acc[
                        T.ramp((r * columns + c) * 16, 1, 16)]

    # scheduled by hand (the heuristic and tuning leave it alone); opaque: FuseOps does not merge it
    return kernel.without_attr("global_symbol").with_attrs({"tirx.is_scheduled": True, "op_pattern": 8, "edgepack.int8_dot": "vnni"})


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


def _candidates(function, n_inputs: int) -> tuple[dict, dict]:
    """({matmul binding var: (activation, zero point, weight param)}, {weight name: why not})."""
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
            if _op_name(value) == MATMUL and str(value.attrs.out_dtype) == "int32":
                weight, name = value.args[1], getattr(value.args[1], "name", str(binding.var.name))
                try:
                    if weight not in weights or str(weight.ty.dtype) != "int8" or len(_static(weight) or []) != 2:
                        raise ValueError("its weight is not a 2-D int8 parameter")
                    shape = _static(value.args[0])
                    if shape is None or len(shape) < 2:
                        raise ValueError("its activation's shape is not static with rows")
                    found[binding.var] = (*_activation(value.args[0], bindings), weight)
                except ValueError as why:
                    skipped[name] = str(why)
            self.visit_expr(value)

    _Visit().visit_expr(function.body)
    for var, (_, _, weight) in list(found.items()):
        if uses[weight] != 1:
            skipped[weight.name] = "its weight is used by more than one op"
            del found[var]
    return found, skipped


def use_dot_kernels(module, params: list, feature: str | None, report: DotReport | None = None):
    """Replace `main`'s integer matmuls with the `feature` dot-product kernel; returns (module, params)."""
    import tvm
    from tvm import relax

    from edgepack.compiler.relax_params import input_count

    report = report if report is not None else DotReport()
    report.feature = feature
    if feature not in KERNELS:
        return module, params
    function = module["main"]
    n_inputs = input_count(function)
    found, report.skipped = _candidates(function, n_inputs)
    if not found:
        return module, params
    index_of = {var: i for i, var in enumerate(function.params[n_inputs:])}
    values, new_params, extra, extra_values = list(params), list(function.params), [], []
    plans = {}
    for var, (activation, zero_point, weight) in found.items():
        w = values[index_of[weight]].numpy()
        signed = str(activation.ty.dtype) == "int8"
        try:
            correction = column_correction(w, zero_point, signed)
        except ValueError as why:
            report.skipped[weight.name] = str(why)
            continue
        packed = pack_weight(w)
        values[index_of[weight]] = tvm.runtime.tensor(packed)
        packed_var = relax.Var(weight.name, relax.TensorType(list(packed.shape), "int8"))
        new_params[n_inputs + index_of[weight]] = packed_var
        correction_var = relax.Var(f"{weight.name}_zero_point_correction", relax.TensorType([correction.size], "int32"))
        extra.append(correction_var)
        extra_values.append(tvm.runtime.tensor(correction))
        plans[var] = (activation, packed_var, correction_var, w.shape, signed)
        report.kernels.append(f"matmul {weight.name}")
    if not plans:
        return module, params

    @relax.expr_functor.mutator
    class _Rewrite(relax.expr_functor.PyExprMutator):
        def visit_var_binding_(self, binding):
            plan = plans.get(binding.var)
            if plan is None:
                return super().visit_var_binding_(binding)
            activation, packed_var, correction_var, (k, n), signed = plan
            shape = _static(activation)
            rows = int(np.prod(shape[:-1]))
            kernel = self.builder_.add_func(vnni_dense(rows, k, n, signed), "int8_dot_dense_vnni")
            x = self.visit_expr(activation)
            if len(shape) != 2:
                x = self.builder_.emit(relax.op.reshape(x, [rows, k]))
            out = self.builder_.emit(relax.call_tir(kernel, [x, packed_var, correction_var],
                                                    relax.TensorType([rows, -(-n // 16) * 16], "int32")))
            if n % 16:
                out = self.builder_.emit(relax.op.strided_slice(out, axes=[1], begin=[0], end=[n]))
            value = relax.op.reshape(out, [*shape[:-1], n]) if len(shape) != 2 else out
            self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(value)))

    rewriter = _Rewrite(module)
    body = rewriter.visit_expr(function.body)
    module = rewriter.builder_.get()  # a new module: the caller's is unchanged; it holds the kernels added
    module["main"] = relax.Function(new_params + extra, body, None, function.is_pure, function.attrs, function.span)
    module = relax.transform.DeadCodeElimination(["main"])(module)
    return module, values + extra_values
