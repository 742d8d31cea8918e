"""`main`'s runtime params (the weights of params.bin) in an imported Relax module: counting the model
inputs ahead of them, and turning some of them into constants compiled into the module."""

from __future__ import annotations


def input_count(function) -> int:
    """How many of the function's params are model inputs (the frontend's `num_input`); the rest are weights."""
    return int(function.attrs["num_input"]) if function.attrs is not None and "num_input" in function.attrs else 0


def bind_as_constants(module, values: list, chosen) -> tuple[object, list]:
    """`main` with the weight params in `chosen` bound to their values as constants (the module is copied);
    returns it with the values of the weights that stay params, in order."""
    function = module["main"]
    weights = function.params[input_count(function):]
    binding = {var: value for var, value in zip(weights, values) if var in chosen}
    if not binding:
        return module, list(values)
    module = module.__class__(dict(module.functions_items()), attrs=module.attrs)
    module["main"] = function.bind_params(binding)
    return module, [value for var, value in zip(weights, values) if var not in binding]
