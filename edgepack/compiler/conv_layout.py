"""Convolutions in the blocked NCHW[x]c layout, with weights packed once at build time.

The layout oneDNN, MLAS and OpenVINO use: activations as `[N, C/x, H, W, x]` with `x` the target's fp32
vector width (8 for AVX2, 16 for AVX-512, 4 for NEON), weights as `[O/x, I/x, KH, KW, x(i), x(o)]`. The
innermost output-channel block is one vector: the kernel loads a weight vector, broadcasts one input
value per output pixel and keeps a row of output pixels in accumulators (edgepack.compiler.schedules
tiles it that way without knowing about layouts). Three steps on `main`, all before lowering, after clips are
rewritten to ops the layout pass sees through (edgepack.compiler.clip_ops: ReLU6, Hardswish, Hardsigmoid):

1. `relax.transform.ConvertLayout` with a per-call choice: a one-group or depthwise convolution whose input
   and output channels are multiples of `x` goes blocked (on AVX-512 `x` is 16 or 8 for the whole model, whichever
   blocks more convolutions net of the transforms it adds: `block_convolutions`) (a depthwise weight as `[C/x, 1, KH, KW, 1, x]`: the
   kernel loads input and weight as vectors); the others (a 3-channel stem, grouped, a 10-class head) keep
   NCHW. Element-wise ops between blocked convolutions stay blocked, so the layout transforms sit
   at the edges of blocked regions instead of around every convolution;
2. `layout_transform`/`reshape`/`permute_dims` chains that start at a weight are evaluated once here and
   stored in params.bin in the packed layout (the weight stays a runtime parameter, dtype unchanged);
3. blocked `conv2d` calls, which TOPI cannot legalize, become a TE compute of their own; the 3x3 stride-1 ones of the
   shapes where it wins become Winograd kernels instead (edgepack.compiler.winograd, their weights transformed here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepack.compiler.relax_calls import CONV2D
from edgepack.compiler.relax_calls import op_name as _op_name
from edgepack.compiler.relax_calls import static_shape as _static_shape

#: ops whose result depends only on their first argument: a chain of them on a weight is packed at build time
WEIGHT_OPS = ("relax.layout_transform", "relax.reshape", "relax.permute_dims")


def blockable(call, block: int) -> bool:
    """Whether one conv2d call can run blocked by `block` channels: one group or depthwise, NCHW/OIHW, static
    float shapes, input and output channels multiples of the block."""
    attrs = call.attrs
    if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW" or str(attrs.out_layout) != "NCHW":
        return False
    data, weight = _static_shape(call.args[0]), _static_shape(call.args[1])
    if data is None or weight is None or len(data) != 4 or str(call.args[0].ty.dtype) != "float32":
        return False
    groups = int(attrs.groups)
    if groups != 1 and not (groups == data[1] == weight[0] and weight[1] == 1):  # depthwise, multiplier 1
        return False
    return data[1] % block == 0 and weight[0] % block == 0


def block_sizes(lanes: int) -> tuple[int, ...]:
    """Channel blocks a model may take on a target with `lanes` fp32 lanes, widest first: on AVX-512 also 8 (a ymm
    vector), so 24- and 40-channel convolutions (MobileNetV2, EfficientNet) block too; elsewhere the lanes."""
    return (lanes, lanes // 2) if lanes >= 16 else (lanes,)


def convert_conv_layouts(module, block: int):
    """Step 1: blocked layouts for the convolutions that allow them (others keep NCHW)."""
    from tvm import relax

    def choose(call):
        if _op_name(call) == CONV2D and blockable(call, block):
            inner = 1 if int(call.attrs.groups) > 1 else block  # a depthwise weight has one input channel per group
            return {CONV2D: [f"NCHW{block}c", f"OIHW{inner}i{block}o"]}
        return {CONV2D: ["NCHW", "OIHW"]}  # named, or a blocked input would stay blocked

    converted = relax.transform.ConvertLayout({}, choose)(module)
    # the pass converts a tensor once per blocked use (a stem's output feeding a convolution and a residual add)
    return relax.transform.EliminateCommonSubexpr()(converted)


def pack_weights(module, params: list, n_inputs: int) -> tuple[object, list, int]:
    """Step 2: evaluate the chains of WEIGHT_OPS that start at a weight once; their results become the params.

    Returns (module, params, number of packed results). A weight also used elsewhere stays a param too."""
    import tvm
    from tvm import relax

    function = module["main"]
    weights = list(function.params[n_inputs:])
    derived: dict = {}  # var → its binding, for bindings computed from weights only
    roots: dict = {}  # var → the weight its chain starts at
    order: list = []
    for block in function.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if (_op_name(value) in WEIGHT_OPS and isinstance(value.args[0], relax.Var)
                    and (value.args[0] in weights or value.args[0] in derived)
                    and not any(isinstance(arg, relax.Var) for arg in value.args[1:])):
                derived[binding.var] = binding
                roots[binding.var] = roots.get(value.args[0], value.args[0])
                order.append(binding)
    if not derived:
        return module, params, 0
    users: dict = {}  # var → the vars of the bindings that read it (None: the function's result)

    @relax.expr_functor.visitor
    class _Uses(relax.expr_functor.PyExprVisitor):
        current = None

        def visit_var_binding_(self, binding):
            self.current = binding.var
            self.visit_expr(binding.value)
            self.current = None

        def visit_var_(self, var):
            users.setdefault(var, set()).add(self.current)

        def visit_dataflow_var_(self, var):
            users.setdefault(var, set()).add(self.current)

    _Uses().visit_expr(function.body)
    frontier = [b.var for b in order if any(user not in derived for user in users.get(b.var, ()))]
    kept = [w for w in weights if any(user not in derived for user in users.get(w, ()))]
    used = [w for w in weights if any(user in derived for user in users.get(w, ()))]
    packed = _evaluate(order, used, frontier, {w: v for w, v in zip(weights, params)})
    new_params = [relax.Var(roots[var].name, relax.TensorType(list(value.shape), str(value.dtype)))
                  for var, value in zip(frontier, packed)]
    replace = dict(zip(frontier, new_params))

    @relax.expr_functor.mutator
    class _Rewrite(relax.expr_functor.PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var not in derived:
                super().visit_var_binding_(binding)

        def visit_var_(self, var):
            return replace.get(var, var)

        def visit_dataflow_var_(self, var):
            return replace.get(var, var)

    body = _Rewrite(module).visit_expr(function.body)
    values = {w: v for w, v in zip(weights, params)}
    all_params = list(function.params[:n_inputs]) + kept + new_params
    rewritten = relax.Function(all_params, body, None, function.is_pure, function.attrs, function.span)
    module = tvm.IRModule(dict(module.functions), attrs=module.attrs)
    module["main"] = rewritten
    return module, [values[w] for w in kept] + packed, len(new_params)


def _evaluate(order: list, used: list, frontier: list, values: dict) -> list:
    """Run the weight-only bindings once (a small Relax function built for this machine) on the weights."""
    import tvm
    from tvm import relax

    inputs = [relax.Var(w.name, w.ty) for w in used]
    mapping = dict(zip(used, inputs))
    builder = relax.BlockBuilder()
    with builder.function("pack", inputs):
        for binding in order:
            value = binding.value
            args = [mapping.get(arg, arg) if isinstance(arg, relax.Var) else arg for arg in value.args]
            mapping[binding.var] = builder.emit(relax.Call(value.op, args, value.attrs, value.ty_args))
        builder.emit_func_output(relax.Tuple([mapping[var] for var in frontier]))
    module = relax.transform.LegalizeOps()(builder.get())
    executable = relax.build(module, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    result = vm["pack"](*[tvm.runtime.tensor(values[w].numpy()) for w in used])
    return [tvm.runtime.tensor(np.ascontiguousarray(result[i].numpy())) for i in range(len(frontier))]


def conv2d_nchwc(data, kernel, strides, padding, dilation, out_dtype: str):
    """TE compute of a blocked convolution: data [N, C/x, H, W, x], kernel [O/y, C/x, KH, KW, x, y] →
    [N, O/y, OH, OW, y]; reduction over the input-channel blocks, the window, then the channels of a block."""
    from tvm import te, topi

    batch, in_blocks, height, width, in_lanes = (int(v) for v in data.shape)
    out_blocks, _, kh, kw, _, out_lanes = (int(v) for v in kernel.shape)
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    if top or left or bottom or right:
        data = topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0], name="pad_nchwc")
    out_h = (height + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kw - 1) * dw - 1) // sw + 1
    rc_outer = te.reduce_axis((0, in_blocks), name="rc_outer")
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    rc_inner = te.reduce_axis((0, in_lanes), name="rc_inner")
    return te.compute(
        (batch, out_blocks, out_h, out_w, out_lanes),
        lambda n, c, y, x, o: te.sum(
            data[n, rc_outer, y * sh + ry * dh, x * sw + rx * dw, rc_inner].astype(out_dtype)
            * kernel[c, rc_outer, ry, rx, rc_inner, o].astype(out_dtype),
            axis=[rc_outer, ry, rx, rc_inner]),
        name="conv2d_nchwc")


def depthwise_nchwc(data, kernel, strides, padding, dilation, out_dtype: str):
    """TE compute of a blocked depthwise convolution: data [N, C/x, H, W, x], kernel [C/x, 1, KH, KW, 1, x] →
    [N, C/x, OH, OW, x]; the channel block is both the vector and the group."""
    from tvm import te, topi

    batch, blocks, height, width, lanes = (int(v) for v in data.shape)
    _, _, kh, kw, _, _ = (int(v) for v in kernel.shape)
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    if top or left or bottom or right:
        data = topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0], name="pad_nchwc")
    out_h = (height + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kw - 1) * dw - 1) // sw + 1
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    return te.compute(
        (batch, blocks, out_h, out_w, lanes),
        lambda n, c, y, x, o: te.sum(
            data[n, c, y * sh + ry * dh, x * sw + rx * dw, o].astype(out_dtype) * kernel[c, 0, ry, rx, 0, o].astype(out_dtype),
            axis=[ry, rx]),
        name="depthwise_nchwc")


def legalize_blocked_convs(module):
    """Step 3: blocked conv2d calls (which TOPI's legalization leaves alone) as calls of conv2d_nchwc."""
    from tvm import relax

    @relax.expr_functor.mutator
    class _Legalize(relax.expr_functor.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if _op_name(call) != CONV2D or len(str(call.attrs.data_layout)) == 4:
                return call
            attrs = call.attrs
            compute = depthwise_nchwc if int(attrs.groups) > 1 else conv2d_nchwc
            return self.builder_.call_te(compute, call.args[0], call.args[1], list(attrs.strides), list(attrs.padding),
                                         list(attrs.dilation), str(call.ty.dtype), primfunc_name_hint=compute.__name__)

    mutator = _Legalize(module)
    for gvar, function in module.functions.items():
        if isinstance(function, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(function))
    return mutator.builder_.get()


def block_convolutions(module, params: list, n_inputs: int, lanes: int, winograd: bool = True) -> tuple[object, list, dict]:
    """All three steps; returns (module, params, report: layout, blocked_convs, blocks = each convolution's block by
    its weight's name, 0 for NCHW, winograd_convs (none without `winograd`), and `skipped`: why none are blocked when it
    gave up).

    On AVX-512 the block is 16 or 8 (block_sizes), one for the whole model: the one that blocks the most
    convolutions net of the activation transforms it adds (choose_plan; MobileNetV2 with its 24-channel convolutions
    takes 8, ResNet-18 16, EfficientNet-B0 stays NCHW). Per-convolution blocks are not offered: TVM 0.27's
    ConvertLayout fails on a direct NCHW16c <-> NCHW8c conversion ("Invalid layout axis 8b"). A model the layout pass cannot convert (its layout inference fails on, e.g., a LayerNorm over
    the channels of a blocked tensor) is left in NCHW, and so is one where ops between the convolutions stay NCHW
    and the activations would be converted back and forth (MobileNetV2 with its ReLU6 left opaque: 68 transforms
    for 51 convolutions, 1.15x slower blocked; with the clips rewritten, 2)."""
    from edgepack.compiler.clip_ops import rewrite_clips
    from edgepack.errors import first_line

    # nothing to block: the layout pass is not run (it also died with SIGFPE on ONNX's DynamicQuantizeLinear body)
    if not any(blockable(call, size) for call in _conv_calls(module) for size in block_sizes(lanes)):
        return module, params, {"layout": "NCHW", "blocked_convs": 0}
    module = rewrite_clips(module)[0]  # before the layout pass, which cannot see through the importer's clips
    tried, failure = [], None
    for size in block_sizes(lanes):
        try:
            converted = convert_conv_layouts(module, size)
        except Exception as exc:  # noqa: BLE001 - TVM's layout inference raises several types
            failure = failure or f"layout conversion failed, kept NCHW ({type(exc).__name__}: ...{first_line(exc)[-120:]})"
            continue
        blocked = sum(1 for call in _conv_calls(converted) if _block_of(call))
        tried.append(Plan(size, converted, blocked, _activation_transforms(converted, n_inputs)))
    plan = choose_plan(tried)
    nchw = {"layout": "NCHW", "blocked_convs": 0}
    if plan is None:
        return module, params, {**nchw, **({"skipped": failure} if failure and not tried else {})}
    if plan.transforms > max(2, plan.blocked // 2) or (len(tried) > 1 and plan.score <= 0):
        return module, params, {**nchw, "skipped": (
            f"{plan.transforms} activation layout transforms for {plan.blocked} blocked convolutions at NCHW{plan.block}c "
            "(ops between them that only run in NCHW: a squeeze-excite's gate, the ONNX importer's Clip), kept NCHW")}
    packed, packed_params, _ = pack_weights(plan.module, params, n_inputs)
    blocks = {_weight_name(call, i): _block_of(call) for i, call in enumerate(_conv_calls(packed))}
    tiles: dict = {}
    if winograd:  # 3x3 stride-1 convolutions of the shapes where Winograd wins (edgepack.compiler.winograd)
        from edgepack.compiler.winograd import use_winograd

        packed, packed_params, tiles = use_winograd(packed, packed_params, n_inputs)
    report = {"layout": f"NCHW{plan.block}c", "blocked_convs": plan.blocked, "blocks": blocks, "winograd_convs": len(tiles)}
    return legalize_blocked_convs(packed), packed_params, report


@dataclass(frozen=True)
class Plan:
    """One way of blocking a model's convolutions: the channel block, the converted module, how many convolutions
    it blocks and how many activation layout transforms it adds."""

    block: int
    module: object
    blocked: int
    transforms: int

    @property
    def score(self) -> int:
        """Blocked convolutions net of the transforms beyond a blocked region's two edges (TRANSFORM_COST each)."""
        return self.blocked - TRANSFORM_COST * max(self.transforms - 2, 0)


#: blocked convolutions one activation layout transform costs, beyond the two at the edges of a blocked region; on
#: targets with a choice of blocks (AVX-512) a plan that does not gain is left NCHW: EfficientNet-B0 at 8c (58 blocked,
#: 24 transforms, its squeeze-excite gates) ran ~5% slower than NCHW at x86-64-v4, MobileNetV2 (51, 2) 3-9% faster
TRANSFORM_COST = 3


def choose_plan(plans: list[Plan]) -> Plan | None:
    """The plan with the most blocked convolutions net of its extra activation transforms (Plan.score), the wider block
    breaking ties; None when no plan blocks any."""
    useful = [plan for plan in plans if plan.blocked]
    if not useful:
        return None
    return max(useful, key=lambda plan: (plan.score, plan.block))


def _block_of(call) -> int:
    """A conv2d call's channel block (NCHW16c: 16), 0 for NCHW."""
    layout = str(call.attrs.data_layout)
    return int(layout[4:-1]) if len(layout) > 4 else 0


def _weight_name(call, index: int) -> str:
    from tvm import relax

    weight = call.args[1]
    return weight.name if isinstance(weight, relax.Var) else f"conv{index}"


def _activation_transforms(module, n_inputs: int) -> int:
    """layout_transform calls in `main` that do not start at a weight: each one copies an activation."""
    from tvm import relax

    function = module["main"]
    weight_derived = set(function.params[n_inputs:])
    count = 0
    for block in function.body.blocks:
        for binding in block.bindings:
            name = _op_name(binding.value)
            source = binding.value.args[0] if name in WEIGHT_OPS else None
            if isinstance(source, relax.Var) and source in weight_derived:
                weight_derived.add(binding.var)
            elif name == "relax.layout_transform":
                count += 1
    return count


def _conv_calls(module) -> list:
    """The conv2d calls of `main`, in order."""
    found = []
    for block in module["main"].body.blocks:
        for binding in block.bindings:
            if _op_name(binding.value) == CONV2D:
                found.append(binding.value)
    return found
