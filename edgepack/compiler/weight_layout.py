"""Weights stored in the layout the kernels read: layout changes of weights done once, at build time.

With the weights kept as inputs (params.bin) nothing folds a layout change of a weight, so it would
run on every call, or force the kernel to read the weight across its rows. Two rewrites of `main`,
each for a weight used only by the op rewritten, dtype unchanged (int8 weights stay int8):

- `permute_dims(W)` (ONNX `Gemm(transB=1)`, i.e. every exported `nn.Linear`): params.bin holds the
  transposed weight and the transpose leaves the graph (an MLP ran ~3-10x faster);
- `conv2d(x, W)` in NCHW with an OIHW kernel and one group: params.bin holds W as IHWO, output
  channels innermost, so the heuristic schedule (edgepack.compiler.schedules) loads the weight as vectors along
  the output channels and broadcasts the input (1x1 convolutions at 14x14 and 28x28 ran 6-16x faster).
"""

from __future__ import annotations

import numpy as np

TRANSPOSE = "relax.permute_dims"
CONV2D = "relax.nn.conv2d"
CONV_WEIGHT_AXES = (1, 2, 3, 0)  # OIHW → IHWO


def _op_name(expr) -> str | None:
    from tvm import relax
    from tvm.ir import Op

    if isinstance(expr, relax.Call) and isinstance(expr.op, Op):
        return expr.op.name
    return None


def _relayout_conv(call) -> bool:
    attrs = call.attrs
    return (int(attrs.groups) == 1 and str(attrs.data_layout) == "NCHW" and str(attrs.kernel_layout) == "OIHW"
            and str(attrs.out_layout) == "NCHW")


def _weight_rewrites(function, n_inputs: int) -> dict:
    """`{param: (kind, binding var, axes)}` for weights used exactly once, by a rewritable op."""
    from tvm import relax

    params = list(function.params[n_inputs:])
    uses: dict = {var: 0 for var in params}
    found: dict = {}

    @relax.expr_functor.visitor
    class _Uses(relax.expr_functor.PyExprVisitor):
        def visit_var_(self, var):
            if var in uses:
                uses[var] += 1

        def visit_var_binding_(self, binding):
            value, name = binding.value, _op_name(binding.value)
            if name == TRANSPOSE and isinstance(value.args[0], relax.Var) and value.args[0] in uses:
                axes = value.attrs.axes
                found[value.args[0]] = ("transpose", binding.var, None if axes is None else [int(a) for a in axes])
            elif name == CONV2D and isinstance(value.args[1], relax.Var) and value.args[1] in uses and _relayout_conv(value):
                found[value.args[1]] = ("conv", binding.var, list(CONV_WEIGHT_AXES))
            self.visit_expr(value)

    _Uses().visit_expr(function.body)
    return {param: entry for param, entry in found.items() if uses[param] == 1}


def pretranspose_weights(module, params: list) -> tuple[object, list, int]:
    """Apply both rewrites to `main`'s weights; returns (module, params, number of weights rewritten)."""
    import tvm
    from tvm import relax

    from edgepack.compiler.relax_params import input_count

    function = module["main"]
    n_inputs = input_count(function)
    rewrites = _weight_rewrites(function, n_inputs)
    if not rewrites:
        return module, params, 0
    new_params, values = list(function.params[:n_inputs]), list(params)
    dropped, relaid = {}, {}  # transpose binding → new param; old conv weight → new param
    for index, param in enumerate(function.params[n_inputs:]):
        if param not in rewrites:
            new_params.append(param)
            continue
        kind, binding_var, axes = rewrites[param]
        array = np.ascontiguousarray(np.transpose(values[index].numpy(), axes))
        values[index] = tvm.runtime.tensor(array)
        new_param = relax.Var(param.name, relax.TensorType(list(array.shape), str(array.dtype)))
        new_params.append(new_param)
        if kind == "transpose":
            dropped[binding_var] = new_param
        else:
            relaid[param] = new_param

    @relax.expr_functor.mutator
    class _Rewrite(relax.expr_functor.PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var not in dropped:
                super().visit_var_binding_(binding)

        def visit_var_(self, var):
            return dropped.get(var, relaid.get(var, var))

        def visit_dataflow_var_(self, var):
            return dropped.get(var, var)

        def visit_call_(self, call):
            if _op_name(call) == CONV2D and call.args[1] in relaid:
                attrs = call.attrs
                return relax.op.nn.conv2d(self.visit_expr(call.args[0]), relaid[call.args[1]], strides=attrs.strides,
                                          padding=attrs.padding, dilation=attrs.dilation, groups=attrs.groups,
                                          data_layout="NCHW", kernel_layout="IHWO", out_layout="NCHW",
                                          out_dtype=attrs.out_dtype)
            return super().visit_call_(call)

    body = _Rewrite(module).visit_expr(function.body)
    rewritten = relax.Function(new_params, body, None, function.is_pure, function.attrs, function.span)
    module = tvm.IRModule(dict(module.functions), attrs=module.attrs)  # a copy: the caller's module is unchanged
    module["main"] = rewritten
    return module, values, len(rewrites)
