"""Reading calls of an imported Relax module: the op a call makes and the static shape of an expression."""

from __future__ import annotations

CONV2D = "relax.nn.conv2d"


def op_name(expr) -> str | None:
    """The name of the op `expr` calls (`relax.nn.conv2d`), None when it is not a call of an op."""
    from tvm import relax
    from tvm.ir import Op

    if isinstance(expr, relax.Call) and isinstance(expr.op, Op):
        return expr.op.name
    return None


def static_shape(expr) -> list[int] | None:
    """The dimensions of a tensor expression, None for an unknown rank or symbolic dimensions."""
    shape = getattr(expr.ty, "shape", None)
    try:
        return [int(v) for v in shape]
    except (TypeError, ValueError):
        return None
