"""Integer execution of QDQ models: DQ → conv2d/matmul (+ bias) → Q becomes an int32-accumulating op + requantize.

TVM's ONNX frontend imports a QDQ model (ONNX Runtime `quantize_static`, QDQ format) as
dequantize-then-float: every conv and matmul runs in fp32 on dequantized tensors. This pass rewrites
each chain

    Q( [relu]( op(DQ(qx, sx, zx), DQ(qw, sw, 0)) [+ bias] ), sy, zy )        op: conv2d, matmul (Gemm)

into

    acc = op(qx - zx, qw, out_dtype=int32)  [+ qb]              # integer MACs, int32 accumulation
    qy  = clip(round(acc · sx·sw[c]/sy  [+ b[c]/sy]) + zy, qmin, qmax)

- activations (uint8 or int8, one scale and zero point per tensor) enter as they are when zx = 0, else as
  int16 `qx - zx` (so zero padding stays exact: 0 means the real value 0);
- weights stay int8 (per-channel or per-tensor scales, zero point 0: ORT's symmetric int8 weights);
- an int32 bias quantized with scale sx·sw (ORT's convention) is added to the accumulator exactly; any
  other bias (float, or another scale) is added in float inside the requantize;
- a ReLU between op and Q becomes the lower clip bound max(qmin, zy).

Scales and zero points must be known when compiling, so the pass first binds the parameters that feed
Q/DQ scales and zero points as constants (the quantized weights and biases stay parameters, int8/int32
in params.bin). Every conv2d/matmul the pass leaves in float is listed with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

QUANT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
#: relative tolerance for "the bias scale is sx·sw" (ORT computes it in float32)
BIAS_SCALE_RTOL = 1e-5


@dataclass
class IntegerReport:
    """Which conv2d/matmul ops became integer, which stayed float and why."""

    integer: list[str] = field(default_factory=list)
    float: dict[str, str] = field(default_factory=dict)
    bound_params: int = 0
    quantized: bool = False  # the model has QuantizeLinear/DequantizeLinear
    note: str = ""  # why the pass did not run, when it did not

    def merge(self, other: "IntegerReport") -> None:
        self.integer += other.integer
        self.float.update(other.float)
        self.bound_params += other.bound_params
        self.quantized = self.quantized or other.quantized
        self.note = self.note or other.note

    def to_json(self) -> dict:
        return {"quantized": self.quantized, "integer": len(self.integer), "float": len(self.float),
                "integer_ops": list(self.integer), "float_ops": dict(self.float),
                "bound_quantization_params": self.bound_params, **({"note": self.note} if self.note else {})}


class _NoMatch(Exception):
    """The chain cannot run in integers; the message says why."""


@dataclass
class _Plan:
    kind: str  # "conv2d" | "matmul"
    core: object  # the float op's Call
    qx: object  # integer activation (original expr)
    zx: int
    qw: object  # integer weight (original expr)
    transposed: bool  # matmul weight consumed through permute_dims(w, [1, 0]) (ONNX Gemm transB)
    multiplier: np.ndarray  # sx*sw/sy, per output channel (or one value)
    int_bias: object | None  # int32 bias expr (original), shape already broadcast-ready or 1-D
    float_bias: object | None  # float bias expr (original)
    sy: float
    zy: int
    lower: int
    upper: int
    out_dtype: str
    name: str


def _op_name(expr) -> str | None:
    import tvm
    from tvm import relax

    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def _const(expr, what: str) -> np.ndarray:
    from tvm.ir.expr import Constant

    if not isinstance(expr, Constant):
        raise _NoMatch(f"{what} is not known at compile time")
    return expr.value.numpy()


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _shape(expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


def _quant_var_params(func) -> set:
    """The function parameters used as scale or zero point of a quantize/dequantize call."""
    from tvm import relax

    found = set()

    def visit(expr):
        if _op_name(expr) in ("relax.quantize", "relax.dequantize"):
            for arg in expr.args[1:3]:
                if isinstance(arg, relax.Var):
                    found.add(arg)

    relax.analysis.post_order_visit(func.body, visit)
    return found & set(func.params)


def bind_quantization_params(module, params: dict):
    """Bind the parameters that are Q/DQ scales and zero points as constants; the others stay parameters.

    Returns (module, params, count bound)."""
    from edgepack.compiler.relax_params import bind_as_constants

    values = list(params.get("main", []))
    module, kept = bind_as_constants(module, values, _quant_var_params(module["main"]))
    return module, {**params, "main": kept}, len(values) - len(kept)


class _Matcher:
    """Reads a function's bindings and decides, for each quantize call, whether its chain runs in integers."""

    def __init__(self, func):
        from tvm import relax

        self.values = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    self.values[binding.var] = binding.value

    def value(self, expr):
        """Follow variables to the expression bound to them."""
        seen = 0
        while expr in self.values and seen < 64:
            expr = self.values[expr]
            seen += 1
        return expr

    def call(self, expr, name: str):
        found = self.value(expr)
        return found if _op_name(found) == name else None

    def match(self, quantize, name_of) -> _Plan:
        data, sy_expr, zy_expr = quantize.args
        out_dtype = str(quantize.attrs.out_dtype)
        if out_dtype not in QUANT_RANGE:
            raise _NoMatch(f"output quantized to {out_dtype} (int8/uint8 only)")
        sy = _const(sy_expr, "the output scale").astype(np.float64)
        zy = _const(zy_expr, "the output zero point").astype(np.int64)
        if sy.size != 1 or zy.size != 1:
            raise _NoMatch("the output is quantized per channel")
        lower, upper = QUANT_RANGE[out_dtype]
        node = self.value(data)
        if _op_name(node) == "relax.nn.relu":
            lower = max(lower, int(zy.reshape(())))
            node = self.value(node.args[0])
        bias = None
        if _op_name(node) == "relax.add":
            left, right = (self.value(a) for a in node.args)
            if _op_name(left) in ("relax.nn.conv2d", "relax.matmul"):
                node, bias = left, node.args[1]
            elif _op_name(right) in ("relax.nn.conv2d", "relax.matmul"):
                node, bias = right, node.args[0]
            else:
                raise _NoMatch("no conv2d/matmul before the quantize")
        kind = {"relax.nn.conv2d": "conv2d", "relax.matmul": "matmul"}.get(_op_name(node))
        if kind is None:
            raise _NoMatch("no conv2d/matmul before the quantize")
        name = name_of(node)
        x_dq = self.call(node.args[0], "relax.dequantize")
        if x_dq is None:
            raise _NoMatch("its input is not dequantized from int8/uint8")
        w_expr, transposed = node.args[1], False
        permute = self.call(w_expr, "relax.permute_dims")
        if kind == "matmul" and permute is not None:
            axes = [int(a) for a in permute.attrs.axes] if permute.attrs.axes is not None else None
            if axes not in (None, [1, 0]) or len(_shape(permute.args[0])) != 2:
                raise _NoMatch(f"weight permutation {axes} not supported")
            w_expr, transposed = permute.args[0], True
        w_dq = self.call(w_expr, "relax.dequantize")
        if w_dq is None:
            raise _NoMatch("its weights are not quantized (float weights)")
        qx, sx_expr, zx_expr = x_dq.args
        qw, sw_expr, zw_expr = w_dq.args
        if _dtype(qx) not in QUANT_RANGE:
            raise _NoMatch(f"activation dtype {_dtype(qx)} (int8/uint8 only)")
        if _dtype(qw) != "int8":
            raise _NoMatch(f"weight dtype {_dtype(qw)} (int8 only)")
        sx = _const(sx_expr, "the input scale").astype(np.float64)
        zx = _const(zx_expr, "the input zero point").astype(np.int64)
        if sx.size != 1 or zx.size != 1:
            raise _NoMatch("input quantized per channel")
        sw = _const(sw_expr, "the weight scale").astype(np.float64)
        zw = _const(zw_expr, "the weight zero point").astype(np.int64)
        if np.any(zw != 0):
            raise _NoMatch("asymmetric weights (zero point != 0)")
        w_shape = _shape(qw)
        out_channels = self._out_channels(kind, node, w_shape, transposed)
        if sw.size not in (1, out_channels):
            raise _NoMatch(f"weight scales ({sw.size}) are not per tensor or per output channel")
        if sw.size > 1:
            axis = int(w_dq.attrs.axis) % len(w_shape)
            wanted = 0 if kind == "conv2d" or transposed else len(w_shape) - 1
            if axis != wanted:
                raise _NoMatch(f"weight scales along axis {axis}, not the output channels")
        if kind == "conv2d" and (str(node.attrs.data_layout) != "NCHW" or str(node.attrs.kernel_layout) != "OIHW"):
            raise _NoMatch(f"layout {node.attrs.data_layout}/{node.attrs.kernel_layout} (NCHW/OIHW only)")
        if kind == "matmul" and len(w_shape) != 2:
            raise _NoMatch("batched weights")
        multiplier = (sx.reshape(()) * sw.reshape(-1) / sy.reshape(())).astype(np.float32)
        int_bias, float_bias = self._bias(bias, sx.reshape(()) * sw.reshape(-1), out_channels)
        return _Plan(kind, node, qx, int(zx.reshape(())), qw, transposed, multiplier, int_bias,
                     float_bias, float(sy.reshape(())), int(zy.reshape(())), lower, upper, out_dtype, name)

    @staticmethod
    def _out_channels(kind: str, node, w_shape, transposed: bool) -> int:
        if kind == "conv2d":
            return w_shape[0]
        return w_shape[0] if transposed else w_shape[-1]

    def _bias(self, bias, acc_scale: np.ndarray, out_channels: int):
        """(int32 bias in accumulator units, None) when it is quantized with scale sx*sw, else (None, float bias)."""
        if bias is None:
            return None, None
        node, reshape = self.value(bias), None
        if _op_name(node) == "relax.reshape":
            reshape, node = node, self.value(node.args[0])
        if _op_name(node) == "relax.dequantize" and _dtype(node.args[0]) == "int32":
            try:
                sb = _const(node.args[1], "bias scale").astype(np.float64).reshape(-1)
                zb = _const(node.args[2], "bias zero point").reshape(-1)
            except _NoMatch:
                return None, bias
            scale = np.broadcast_to(acc_scale, (out_channels,))
            if not np.any(zb) and sb.size in (1, out_channels) and np.allclose(np.broadcast_to(sb, scale.shape), scale, rtol=BIAS_SCALE_RTOL, atol=0):
                return (node.args[0], reshape), None
        return None, bias


def _emit_plan(builder, plan: _Plan, remap):
    """Emit the integer op and its requantize; returns the quantized expression."""
    from tvm import relax

    op = relax.op
    qx = remap(plan.qx)
    if plan.zx != 0:
        qx = builder.emit(op.subtract(op.astype(qx, "int16"), relax.const(plan.zx, "int16")))
    qw = remap(plan.qw)
    if plan.transposed:
        qw = builder.emit(op.permute_dims(qw, [1, 0]))
    if plan.kind == "conv2d":
        attrs = plan.core.attrs
        acc = builder.emit(op.nn.conv2d(qx, qw, strides=attrs.strides, padding=attrs.padding, dilation=attrs.dilation,
                                        groups=int(attrs.groups), data_layout="NCHW", kernel_layout="OIHW",
                                        out_dtype="int32"))
        channel_shape = (1, -1, 1, 1)
    else:
        acc = builder.emit(op.matmul(qx, qw, out_dtype="int32"))
        channel_shape = (-1,)
    if plan.int_bias is not None:
        bias, reshape = plan.int_bias
        bias = remap(bias)
        if reshape is not None:
            bias = op.reshape(bias, reshape.args[1])
        acc = builder.emit(op.add(acc, bias))
    multiplier = plan.multiplier.reshape(channel_shape) if plan.multiplier.size > 1 else plan.multiplier.reshape(())
    scaled = op.multiply(op.astype(acc, "float32"), relax.const(multiplier, "float32"))
    if plan.float_bias is not None:
        scaled = op.add(scaled, op.multiply(remap(plan.float_bias), relax.const(np.float32(1.0 / plan.sy), "float32")))
    rounded = op.add(op.round(scaled), relax.const(np.float32(plan.zy), "float32"))
    clipped = op.clip(rounded, float(plan.lower), float(plan.upper))
    return op.astype(clipped, plan.out_dtype)


def _core_ops(func) -> list:
    """(call, var name) of every conv2d/matmul in the function, in order."""
    from tvm import relax

    found = []
    for block in func.body.blocks:
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding) and _op_name(binding.value) in ("relax.nn.conv2d", "relax.matmul"):
                found.append((binding.value, binding.var.name))
    return found


def integerize(module, params: dict | None = None):
    """Rewrite QDQ conv2d/matmul chains of `module["main"]` into integer ops + requantize.

    `params` are the detached parameters (relax.frontend.detach_params); the scale and zero-point ones are
    bound as constants. Returns (module, params, IntegerReport). A model without quantize calls comes back
    unchanged."""
    from tvm import relax

    report = survey(module)
    if not report.quantized:
        return module, params, report
    report.float.clear()
    func = module["main"]
    if params is not None:
        module, params, report.bound_params = bind_quantization_params(module, params)
        func = module["main"]
    matcher = _Matcher(func)
    weight_names = {}
    for call, var_name in _core_ops(func):
        weight_names[call] = _layer_name(matcher, call, var_name)
    name_of = lambda call: weight_names.get(call, "op")  # noqa: E731
    plans, reasons = {}, {}
    for var, value in matcher.values.items():
        if _op_name(value) != "relax.quantize":
            continue
        try:
            plan = matcher.match(value, name_of)
        except _NoMatch as why:
            core = _reached_core(matcher, value)
            if core is not None:
                reasons[core] = str(why)
            continue
        plans[var] = plan
    rewritten = set()

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            plan = plans.get(binding.var)
            if plan is None:
                return super().visit_var_binding_(binding)
            value = _emit_plan(self.builder_, plan, self.visit_expr)
            self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(value)))
            rewritten.add(plan.core)

    original = module
    try:
        new_func = _Rewriter(module).visit_expr(func)
        module = module.__class__(dict(module.functions_items()), attrs=module.attrs)
        module["main"] = new_func
        module = relax.transform.DeadCodeElimination(["main"])(module)
    except Exception as exc:  # noqa: BLE001 - our bug or TVM's: the float graph still computes the same values
        from edgepack.errors import first_line

        for call, _ in _core_ops(func):
            report.float[weight_names[call]] = f"integer rewrite failed ({type(exc).__name__}: {first_line(exc)[:120]})"
        return original, params, report
    for call, _ in _core_ops(func):
        name = weight_names[call]
        if call in rewritten:
            report.integer.append(f"{plans_kind(call)} {name}")
        else:
            report.float[name] = reasons.get(call, "its output is not quantized (no QuantizeLinear after it, or an op between them other than bias add and ReLU)")
    return module, params, report


def survey(module, reason: str | None = None) -> IntegerReport:
    """The report of a module the pass does not rewrite: is it quantized, and its conv2d/matmul ops, all float."""
    func = module["main"]
    report = IntegerReport(quantized=any(_op_name(c) in ("relax.quantize", "relax.dequantize") for c in _all_calls(func)))
    matcher = _Matcher(func)
    for call, var_name in _core_ops(func):
        report.float[_layer_name(matcher, call, var_name)] = reason or (
            "integer execution is off" if report.quantized else "the model is not quantized")
    return report


def plans_kind(call) -> str:
    return "conv2d" if _op_name(call) == "relax.nn.conv2d" else "matmul"


def _all_calls(func) -> list:
    from tvm import relax

    calls = []
    relax.analysis.post_order_visit(func.body, lambda e: calls.append(e) if isinstance(e, relax.Call) else None)
    return calls


def _reached_core(matcher: _Matcher, quantize):
    """The conv2d/matmul a failed quantize chain started from, if any (for the reason)."""
    node = matcher.value(quantize.args[0])
    for _ in range(2):
        if _op_name(node) in ("relax.nn.conv2d", "relax.matmul"):
            return node
        if _op_name(node) == "relax.nn.relu":
            node = matcher.value(node.args[0])
        elif _op_name(node) == "relax.add":
            for arg in node.args:
                if _op_name(matcher.value(arg)) in ("relax.nn.conv2d", "relax.matmul"):
                    return matcher.value(arg)
            return None
    return node if _op_name(node) in ("relax.nn.conv2d", "relax.matmul") else None


def _layer_name(matcher: _Matcher, call, var_name: str) -> str:
    """A readable layer name: the weight parameter's name (from the ONNX initializer), else the Relax variable."""
    from tvm import relax

    node = matcher.value(call.args[1])
    for _ in range(3):
        if isinstance(node, relax.Var):
            return node.name
        if isinstance(node, relax.Call) and node.args:
            node = matcher.value(node.args[0])
    return var_name


#: cpu_features (targets/*.toml, kernel hwcap names) of int8 dot-product instructions TVM has tensor intrinsics for
DOT_PRODUCT_FEATURES = {"avx512_vnni": "AVX512-VNNI", "asimddp": "Armv8.2 dotprod"}


def speed_warnings(report: IntegerReport, target, dot=None) -> list[str]:
    """Build-output warnings when the quantized model will run slower than the fp32 one on `target`.

    Measured on x86-64 AVX2 (docs/integer-execution.md): integer kernels without dot-product instructions are
    widened 32-bit multiply-adds, slower than fp32 FMA; dequantize-then-float adds Q/DQ work to the fp32 work.
    `dot` (edgepack.compiler.int8_dot.DotReport) lists the matmuls that run on a dot-product kernel instead."""
    if not report.quantized:
        return []
    warnings = []
    total = len(report.integer) + len(report.float)
    if report.float:
        first = next(iter(report.float.items()))
        warnings.append(f"{len(report.float)} of {total} conv/matmul ops of the quantized model run dequantize-then-float "
                        f"(e.g. {first[0]}: {first[1]}), slower than the same ops in an fp32 build")
    on_dot = set(dot.kernels) if dot is not None else set()
    widened = [op for op in report.integer if op not in on_dot]
    if widened:
        present = [name for feature, name in DOT_PRODUCT_FEATURES.items() if target.supports(feature)]
        skipped = next(iter(dot.skipped.items()), None) if dot is not None else None
        why = (f"the target's {', '.join(present)} kernels do not take them (e.g. {skipped[0]}: {skipped[1]})"
               if present and skipped else f"the target's {', '.join(present)} is not used by these kernels"
               if present else "the target has no int8 dot-product instructions")
        warnings.append(f"int8 is likely slower than fp32 on '{target.name}': {len(widened)} of its {len(report.integer)} "
                        f"integer conv/matmul kernels are widened 32-bit multiply-adds ({why}; measured 1.6-5x slower "
                        "than fp32 on x86-64 AVX2, see docs/integer-execution.md); build the fp32 model where speed "
                        "matters more than size")
    if on_dot and dot is not None and dot.feature is not None:
        from edgepack.compiler.int8_dot import ISAS

        isa = ISAS[dot.feature]
        if not isa.measured:
            warnings.append(f"int8 speed on '{target.name}' is unmeasured: {len(on_dot)} integer conv/matmul kernels use "
                            f"{isa.name} ({dot.feature}), checked for exactness under emulation only; measure on the device "
                            "before choosing int8 over fp32 for speed")
    return warnings
