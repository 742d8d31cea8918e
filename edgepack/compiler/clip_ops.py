"""Clips as `R.maximum`/`R.minimum` on scalar constants, ops Relax's layout inference sees through.

The ONNX importer emits `Clip` (ReLU6) as `call_tir` of TE `maximum`/`minimum` kernels, opaque to
`relax.transform.ConvertLayout`, and `HardSwish`/`HardSigmoid` as `R.clip`, which has no layout rule: both
convert a blocked activation back to NCHW and forth again around every clip (MobileNetV2: 68 layout
transforms for 51 convolutions). As element-wise binary ops with a 0-d constant they stay in the layout of
their input. The same kernels run: `R.maximum`/`R.minimum` legalize to the TE ops the importer called.
"""

from __future__ import annotations

import numpy as np

FLOATS = ("float16", "float32", "float64")


def _op_name(expr) -> str | None:
    from tvm import relax
    from tvm.ir import Op

    if isinstance(expr, relax.Call) and isinstance(expr.op, Op):
        return expr.op.name
    return None


def minmax_kind(func) -> tuple[str, object] | None:
    """`("max" | "min", bound)` when a PrimFunc is one element-wise max/min of its first buffer with a scalar:
    bound "input" means its second buffer (0-d or all ones), a float the immediate the kernel holds; else None."""
    from tvm import s_tir, tirx
    from tvm.ir.expr import TensorLoad

    try:
        schedule = s_tir.Schedule(func)
        blocks = [schedule.get(block) for block in schedule.get_child_blocks(schedule.get_sblock("root"))]
    except Exception:  # noqa: BLE001 - not a block-structured kernel
        return None
    buffers = list(func.params)  # in TVM 0.27 a PrimFunc's params are the buffers (vars of BufferType)
    if len(blocks) != 1 or len(buffers) not in (2, 3) or not isinstance(blocks[0].body, tirx.BufferStore):
        return None
    store = blocks[0].body
    kind = {tirx.Max: "max", tirx.Min: "min"}.get(type(store.value))
    if kind is None or not store.buffer.same_as(buffers[-1]):
        return None
    first, second = store.value.a, store.value.b
    if not (isinstance(first, TensorLoad) and first.source.same_as(buffers[0]) and len(first.indices) == len(store.indices)
            and all(a.same_as(b) for a, b in zip(first.indices, store.indices))):
        return None
    if len(buffers) == 3:
        shape = buffers[1].ty.shape
        scalar = all(isinstance(dim, tirx.IntImm) and int(dim) == 1 for dim in shape)
        return (kind, "input") if isinstance(second, TensorLoad) and second.source.same_as(buffers[1]) and scalar else None
    if isinstance(second, tirx.Cast):
        second = second.value
    if isinstance(second, (tirx.FloatImm, tirx.IntImm)):
        return kind, float(second.value)
    return None


def rewrite_clips(module) -> tuple[object, int]:
    """`main` with every float clip as `R.maximum`/`R.minimum` by a 0-d constant; returns (module, clips rewritten).

    Kernels it cannot prove to be such a clip (a bound computed at run time, a broadcast tensor) stay as they are."""
    import tvm
    from tvm import relax
    from tvm.ir.expr import Constant

    count = 0
    kinds = {gvar: minmax_kind(func) for gvar, func in module.functions.items() if isinstance(func, tvm.tirx.PrimFunc)}

    @relax.expr_functor.mutator
    class _Rewrite(relax.expr_functor.PyExprMutator):
        def visit_call_(self, call):
            nonlocal count
            call = super().visit_call_(call)
            name = _op_name(call)
            if name == "relax.clip" and _float_tensor(call.args[0]):
                low, high = (_prim_value(arg) for arg in call.args[1:3])
                if low is None or high is None:
                    return call
                count += 1
                dtype = str(call.args[0].ty.dtype)  # topi.clip's order: min with the upper bound, then max
                return relax.op.maximum(self.builder_.emit(relax.op.minimum(call.args[0], relax.const(high, dtype))),
                                        relax.const(low, dtype))
            if name != "relax.call_tir" or call.args[0] not in kinds or kinds[call.args[0]] is None:
                return call
            kind, bound = kinds[call.args[0]]
            args = call.args[1].fields
            if not _float_tensor(args[0]) or len(args) != (2 if bound == "input" else 1):
                return call
            value = self._constant(args[1]) if bound == "input" else np.asarray(bound)
            if value is None or value.size != 1:
                return call
            count += 1
            constant = relax.const(float(value.reshape(())), str(args[0].ty.dtype))
            return (relax.op.maximum if kind == "max" else relax.op.minimum)(args[0], constant)

        def _constant(self, expr):
            """The value of a scalar computed from constants only (the importer's NaN guard on a bound), or None."""
            if isinstance(expr, Constant):
                return expr.value.numpy()
            if isinstance(expr, relax.Var):
                bound = self.lookup_binding(expr)
                return None if bound is None else self._constant(bound)
            name = _op_name(expr)
            if name == "relax.isnan":
                value = self._constant(expr.args[0])
                return None if value is None else np.isnan(value)
            if name == "relax.where":
                values = [self._constant(arg) for arg in expr.args]
                return None if any(v is None for v in values) else np.where(*values)
            return None

    mutator = _Rewrite(module)
    for gvar, function in module.functions.items():
        if isinstance(function, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(function))
    if not count:
        return module, 0
    return relax.transform.DeadCodeElimination()(mutator.builder_.get()), count


def _float_tensor(expr) -> bool:
    dtype = getattr(expr.ty, "dtype", None)
    return dtype is not None and str(dtype) in FLOATS


def _prim_value(expr) -> float | None:
    from tvm import tirx

    if isinstance(expr, (tirx.FloatImm, tirx.IntImm)):  # R.clip's bounds are immediates in TVM 0.27
        return float(expr.value)
    return None
