"""RNN, GRU and LSTM (no TVM converter, no ONNX function) unrolled over their fixed sequence length.

Each direction's input projection is one MatMul over all steps; each step is a MatMul of the hidden state
with the recurrence weights, the gates' activations (the node's `activations`, alphas and betas; `clip` bounds
every gate's input, not the LSTM cell state before its output activation, as ONNX Runtime computes it), peepholes and `linear_before_reset` as ONNX specifies them. `sequence_lens`
masks the steps past a sequence's end (the state is kept, Y is zero there) and a reverse direction reads
each sequence from its own last step, as ONNX Runtime does. Layout 1 (batch first) is transposed around."""

from __future__ import annotations

import numpy as np

from edgepack.frontends.node_builder import CannotLower, GraphFacts, NodeBuilder, attributes

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
# alpha and beta each activation reads from activation_alpha/_beta, in order, with ONNX Runtime's defaults
_ALPHA = {"leakyrelu": 0.01, "thresholdedrelu": 1.0, "elu": 1.0, "hardsigmoid": 0.2, "affine": 1.0, "scaledtanh": 1.0}
_BETA = {"hardsigmoid": 0.5, "affine": 0.0, "scaledtanh": 1.0}
MAX_STEPS = 1024  # nodes grow with the sequence length; longer sequences are refused


class _Activation:
    def __init__(self, name: str, alpha: float | None, beta: float | None):
        self.name, self.alpha, self.beta = name.lower(), alpha, beta

    def __call__(self, b: NodeBuilder, x: str, dtype) -> str:
        name, alpha, beta = self.name, self.alpha, self.beta
        simple = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softsign": "Softsign", "softplus": "Softplus"}
        if name in simple:
            return b.op(simple[name], x)
        if name == "leakyrelu":
            return b.op("LeakyRelu", x, alpha=alpha)
        if name == "elu":
            return b.op("Elu", x, alpha=alpha)
        if name == "hardsigmoid":
            return b.op("HardSigmoid", x, alpha=alpha, beta=beta)
        if name == "thresholdedrelu":
            return b.op("Where", b.op("Greater", x, b.const(alpha, dtype)), x, b.const(0, dtype))
        if name == "affine":
            return b.op("Add", b.op("Mul", x, b.const(alpha, dtype)), b.const(beta, dtype))
        if name == "scaledtanh":
            return b.op("Mul", b.op("Tanh", b.op("Mul", x, b.const(beta, dtype))), b.const(alpha, dtype))
        raise CannotLower(f"activation {name} is not an ONNX RNN activation")


def _activations(node, kind: str, directions: int) -> list[list[_Activation]]:
    """Per direction, the node's activation functions with their alpha and beta."""
    attrs = attributes(node)
    per = len(_DEFAULT_ACTIVATIONS[kind])
    names = attrs.get("activations") or _DEFAULT_ACTIVATIONS[kind] * directions
    if len(names) != per * directions:
        raise CannotLower(f"{kind} has {len(names)} activations, it needs {per * directions}")
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    functions = []
    for name in names:
        key = name.lower()
        alpha = (alphas.pop(0) if alphas else _ALPHA[key]) if key in _ALPHA else None
        beta = (betas.pop(0) if betas else _BETA[key]) if key in _BETA else None
        functions.append(_Activation(name, alpha, beta))
    return [functions[d * per:(d + 1) * per] for d in range(directions)]


class _Cell:
    """One direction's weights, split per gate and transposed for `x @ W`."""

    def __init__(self, b: NodeBuilder, kind: str, node, d: int, hidden: int, dtype):
        inputs = list(node.input) + [""] * (8 - len(node.input))
        gates = GATES[kind]
        self.b, self.kind, self.dtype = b, kind, dtype
        w, r = b.take(inputs[1], d, 0), b.take(inputs[2], d, 0)
        rows = [b.const(np.arange(g * hidden, (g + 1) * hidden, dtype=np.int64)) for g in range(gates)]
        self.w = [b.op("Transpose", b.op("Gather", w, rows[g], axis=0), perm=[1, 0]) for g in range(gates)]
        self.r = [b.op("Transpose", b.op("Gather", r, rows[g], axis=0), perm=[1, 0]) for g in range(gates)]
        if inputs[3]:
            bias = b.take(inputs[3], d, 0)
            self.wb = [b.op("Gather", bias, rows[g], axis=0) for g in range(gates)]
            self.rb = [b.op("Gather", bias, b.const(np.arange((gates + g) * hidden, (gates + g + 1) * hidden, dtype=np.int64)), axis=0)
                       for g in range(gates)]
        else:
            self.wb = self.rb = [b.const(np.zeros(hidden, dtype)) for _ in range(gates)]
        self.p = [b.op("Gather", b.take(inputs[7], d, 0), rows[g], axis=0) for g in range(3)] if kind == "LSTM" and inputs[7] else None

    def projections(self, x: str) -> list[str]:
        """x @ W + bias for every gate, over all steps ([seq, batch, hidden] each); GRU's hidden gate keeps
        its recurrence bias apart (it goes inside the reset product)."""
        b = self.b
        out = []
        for g, w in enumerate(self.w):
            bias = self.wb[g] if self.kind == "GRU" and g == 2 else b.op("Add", self.wb[g], self.rb[g])
            out.append(b.op("Add", b.op("MatMul", x, w), bias))
        return out


def _clipped(b: NodeBuilder, x: str, clip: float | None, dtype) -> str:
    if clip is None:
        return x
    return b.op("Max", b.op("Min", x, b.const(clip, dtype)), b.const(-clip, dtype))


def _step(cell: _Cell, acts: list[_Activation], xs: list[str], h: str, c: str | None, clip, lbr: int):
    """One time step: the new hidden state (and cell state for LSTM) from the step's projections `xs`."""
    b, dtype = cell.b, cell.dtype

    def act(k, value):
        return acts[k](b, _clipped(b, value, clip, dtype), dtype)

    if cell.kind == "RNN":
        return act(0, b.op("Add", xs[0], b.op("MatMul", h, cell.r[0]))), None
    if cell.kind == "GRU":
        z = act(0, b.op("Add", xs[0], b.op("MatMul", h, cell.r[0])))
        r = act(0, b.op("Add", xs[1], b.op("MatMul", h, cell.r[1])))
        if lbr:
            recurrent = b.op("Mul", r, b.op("Add", b.op("MatMul", h, cell.r[2]), cell.rb[2]))
        else:
            recurrent = b.op("Add", b.op("MatMul", b.op("Mul", r, h), cell.r[2]), cell.rb[2])
        candidate = act(1, b.op("Add", xs[2], recurrent))
        one_minus_z = b.op("Sub", b.const(1, dtype), z)
        return b.op("Add", b.op("Mul", one_minus_z, candidate), b.op("Mul", z, h)), None
    gi, go, gf, gc = (b.op("Add", xs[g], b.op("MatMul", h, cell.r[g])) for g in range(4))  # ONNX's gate order: i o f c
    if cell.p:
        gi, gf = b.op("Add", gi, b.op("Mul", cell.p[0], c)), b.op("Add", gf, b.op("Mul", cell.p[2], c))
    i, f, candidate = act(0, gi), act(0, gf), act(1, gc)
    c_new = b.op("Add", b.op("Mul", f, c), b.op("Mul", i, candidate))
    if cell.p:
        go = b.op("Add", go, b.op("Mul", cell.p[1], c_new))
    return b.op("Mul", act(0, go), acts[2](b, c_new, dtype)), c_new


def _reversal_indices(b: NodeBuilder, lengths: str, seq: int, batch: int, features: int) -> str:
    """GatherElements indices along axis 0 that reverse each sequence within its length (an involution)."""
    steps = b.const(np.arange(seq, dtype=np.int64).reshape(seq, 1))
    lens = b.op("Reshape", lengths, b.const(np.array([1, batch], np.int64)))
    reversed_steps = b.op("Sub", b.op("Sub", lens, b.const(np.array(1, np.int64))), steps)
    indices = b.op("Where", b.op("Less", steps, lens), reversed_steps, steps)
    return b.op("Expand", b.op("Reshape", indices, b.const(np.array([seq, batch, 1], np.int64))),
                b.const(np.array([seq, batch, features], np.int64)))


def lower_recurrent(node, facts: GraphFacts) -> NodeBuilder:
    """RNN, GRU or LSTM unrolled into per-step nodes writing the node's outputs."""
    kind = node.op_type
    attrs = attributes(node)
    inputs = list(node.input) + [""] * (8 - len(node.input))
    x_name = inputs[0]
    layout = attrs.get("layout", 0)
    x_shape = facts.static_shape(x_name, kind, "input X")
    seq, batch, features = (x_shape[1], x_shape[0], x_shape[2]) if layout else x_shape
    hidden = attrs.get("hidden_size") or facts.static_shape(inputs[2], kind, "input R")[-1]
    direction = attrs.get("direction", "forward")
    directions = 2 if direction == "bidirectional" else 1
    if seq > MAX_STEPS:
        raise CannotLower(f"{kind}'s sequence of {seq} steps is longer than the {MAX_STEPS} edgepack unrolls")
    if facts.types.get(x_name) not in (1, 10, 11):
        raise CannotLower(f"{kind} on element type {facts.types.get(x_name)} (float, float16, double only)")
    if inputs[4] and facts.opset < 11:
        raise CannotLower(f"{kind}'s sequence_lens needs opset 11 or newer here (GatherElements)")
    dtype = facts.np_dtype(x_name)
    clip = attrs.get("clip")
    lbr = attrs.get("linear_before_reset", 0)
    acts = _activations(node, kind, directions)
    b = NodeBuilder(f"{(node.output[1] if len(node.output) > 1 and node.output[1] else node.output[0])}__unrolled", facts.opset)
    x = b.op("Transpose", x_name, perm=[1, 0, 2]) if layout else x_name
    lengths = b.op("Cast", inputs[4], to=7) if inputs[4] else None
    reversal = _reversal_indices(b, lengths, seq, batch, features) if lengths else None

    def initial(position: int, d: int) -> str:
        if not inputs[position]:
            return b.const(np.zeros((batch, hidden), dtype))
        return b.take(inputs[position], d, 1 if layout else 0)

    ys, hs, cs = [], [], []
    for d in range(directions):
        reverse = direction == "reverse" or d == 1
        cell = _Cell(b, kind, node, d, hidden, dtype)
        source = b.op("GatherElements", x, reversal, axis=0) if reverse and lengths else x
        projections = cell.projections(source)
        h, c = initial(5, d), initial(6, d) if kind == "LSTM" else None
        zeros = b.const(np.zeros((batch, hidden), dtype)) if lengths else None
        outputs: dict[int, str] = {}
        order = range(seq - 1, -1, -1) if reverse and not lengths else range(seq)
        for t in order:
            h_new, c_new = _step(cell, acts[d], [b.take(p, t, 0) for p in projections], h, c, clip, lbr)
            if lengths:  # past a sequence's end: state kept, output zero
                live = b.op("Reshape", b.op("Less", b.const(np.array(t, np.int64)), lengths), b.const(np.array([batch, 1], np.int64)))
                outputs[t] = b.op("Where", live, h_new, zeros)
                h = b.op("Where", live, h_new, h)
                c = b.op("Where", live, c_new, c) if c is not None else None
            else:
                outputs[t], h, c = h_new, h_new, c_new
        y = b.stack([outputs[t] for t in range(seq)], 0)  # [seq, batch, hidden]
        if reverse and lengths:
            y = b.op("GatherElements", y, _reversal_indices(b, lengths, seq, batch, hidden), axis=0)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    names = list(node.output) + [""] * (3 - len(node.output))
    # Y is [seq, directions, batch, hidden], Y_h and Y_c [directions, batch, hidden]; batch first in layout 1
    for name, values, axis, batch_first in ((names[0], ys, 1, [2, 0, 1, 3]), (names[1], hs, 0, [1, 0, 2]), (names[2], cs, 0, [1, 0, 2])):
        if name:
            stacked = b.stack(values, axis)
            if layout:
                b.op("Transpose", stacked, out=name, perm=batch_first)
            else:
                b.op("Identity", stacked, out=name)
    return b
