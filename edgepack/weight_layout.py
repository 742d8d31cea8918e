"""Weights stored in the layout the kernels read: transposes of weights done once, at build time.

ONNX `Gemm(transB=1)` (every exported `nn.Linear`) and `MatMul` on a transposed initializer import as
`matmul(x, permute_dims(W))`. With the weights kept as inputs (params.bin), nothing folds that
transpose: the fused kernel reads `W` across its rows for every output element, and vectorising the
output axis becomes a strided gather (an MLP ran ~10x slower than with the transposed weight). This
pass stores `permute_dims(W)` itself in params.bin and drops the transpose from the graph. It applies
to any parameter whose only use is a `permute_dims` (dtype unchanged, so int8 weights stay int8).
"""

from __future__ import annotations

import numpy as np


def _parameter_transposes(function, n_inputs: int) -> dict:
    """`{param var: (binding var, axes)}` for params used exactly once, by a permute_dims binding."""
    from tvm import relax
    from tvm.ir import Op

    params = list(function.params[n_inputs:])
    uses: dict = {var: 0 for var in params}
    transposes: dict = {}

    @relax.expr_functor.visitor
    class _Uses(relax.expr_functor.PyExprVisitor):
        def visit_var_(self, var):
            if var in uses:
                uses[var] += 1

        def visit_var_binding_(self, binding):
            value = binding.value
            if (isinstance(value, relax.Call) and isinstance(value.op, Op) and value.op.name == "relax.permute_dims"
                    and isinstance(value.args[0], relax.Var) and value.args[0] in uses):
                axes = value.attrs.axes
                transposes[value.args[0]] = (binding.var, None if axes is None else [int(a) for a in axes])
            self.visit_expr(value)

    _Uses().visit_expr(function.body)
    return {param: entry for param, entry in transposes.items() if uses[param] == 1}


def pretranspose_weights(module, params: list) -> tuple[object, list, int]:
    """Move every weight-only transpose of `main` into the weights; returns (module, params, count)."""
    import tvm
    from tvm import relax

    function = module["main"]
    n_inputs = int(function.attrs["num_input"]) if function.attrs and "num_input" in function.attrs else 0
    transposes = _parameter_transposes(function, n_inputs)
    if not transposes:
        return module, params, 0
    new_params, replace, drop = list(function.params[:n_inputs]), {}, set()
    values = list(params)
    for index, param in enumerate(function.params[n_inputs:]):
        if param not in transposes:
            new_params.append(param)
            continue
        binding_var, axes = transposes[param]
        array = np.transpose(values[index].numpy(), axes)
        values[index] = tvm.runtime.tensor(np.ascontiguousarray(array))
        new_param = relax.Var(param.name, relax.TensorType(list(array.shape), str(array.dtype)))
        new_params.append(new_param)
        replace[binding_var] = new_param
        drop.add(binding_var)

    @relax.expr_functor.mutator
    class _Rewrite(relax.expr_functor.PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var not in drop:
                super().visit_var_binding_(binding)

        def visit_var_(self, var):
            return replace.get(var, var)

        def visit_dataflow_var_(self, var):
            return replace.get(var, var)

    body = _Rewrite(module).visit_expr(function.body)
    rewritten = relax.Function(new_params, body, None, function.is_pure, function.attrs, function.span)
    module = tvm.IRModule(dict(module.functions), attrs=module.attrs)  # a copy: the caller's module is unchanged
    module["main"] = rewritten
    return module, values, len(transposes)
