"""Det, DFT and STFT (no TVM converter, no ONNX function) over sizes fixed at build time.

Det of a small matrix (n <= 4) is its cofactor expansion over the matrix's elements. DFT and STFT are
MatMuls with constant cosine and sine matrices of the fixed signal length (computed in float64, stored in
the signal's type): the real and imaginary parts are separate operands, dft_length pads or truncates the
signal (a zero-padded sample adds nothing; a truncated one meets a zero row), onesided keeps the first n/2 + 1 bins, and the inverse of a onesided
spectrum (irfft) weighs the bins that stand for two as ONNX's reference does. STFT frames the signal with
a constant Gather and multiplies the window in."""

from __future__ import annotations

import numpy as np

from edgepack.frontends.node_builder import CannotLower, GraphFacts, NodeBuilder, attributes, constant_int

MAX_DET_SIZE = 4  # n! products; larger matrices are refused
MAX_DFT_LENGTH = 4096


def lower_det(node, facts: GraphFacts) -> NodeBuilder:
    """Det as the cofactor expansion along the first row, minors shared."""
    shape = facts.static_shape(node.input[0], "Det", "input")
    n = shape[-1]
    if n > MAX_DET_SIZE:
        raise CannotLower(f"a {n}x{n} matrix is larger than the {MAX_DET_SIZE}x{MAX_DET_SIZE} edgepack expands")
    b = NodeBuilder(f"{node.output[0]}__det", facts.opset)
    rank = len(shape)
    rows = [b.take(node.input[0], i, rank - 2) for i in range(n)]
    element = [[b.take(row, j, rank - 2) for j in range(n)] for row in rows]
    minors: dict[tuple[int, ...], str] = {}

    def det(columns: tuple[int, ...]) -> str:
        row = n - len(columns)
        if len(columns) == 1:
            return element[row][columns[0]]
        if columns not in minors:
            total = None
            for position, column in enumerate(columns):
                term = b.op("Mul", element[row][column], det(columns[:position] + columns[position + 1:]))
                total = term if total is None else b.op("Sub" if position % 2 else "Add", total, term)
            minors[columns] = total
        return minors[columns]

    b.op("Identity", det(tuple(range(n))), out=node.output[0])
    return b


def _matrices(length: int, size: int, bins: int, inverse: bool, onesided: bool, dtype) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin matrices [length, bins] of angle 2*pi*n*k/size (rows past `size` zero: truncation)."""
    n = np.arange(length, dtype=np.float64).reshape(-1, 1)
    k = np.arange(bins, dtype=np.float64).reshape(1, -1)
    angle = 2 * np.pi * ((n * k) % size) / size
    cos, sin = np.cos(angle), np.sin(angle)
    cos[size:], sin[size:] = 0, 0
    if inverse:
        weight = np.full(length, 1.0 / size)
        if onesided:  # the bins between 0 and size/2 stand for their mirror image too
            weight = np.where((np.arange(length) == 0) | (2 * np.arange(length) == size), 1.0, 2.0) / size
            weight[size // 2 + 1:] = 0
        cos, sin = cos * weight.reshape(-1, 1), sin * weight.reshape(-1, 1)
    return cos.astype(dtype), sin.astype(dtype)


def _dft(b: NodeBuilder, x: str, shape: tuple[int, ...], axis: int, size: int, inverse: bool, onesided: bool, dtype,
         out: str) -> None:
    """The DFT of x (last axis: 1 real or 2 real/imaginary) along `axis` of length `size`, written to `out`."""
    rank = len(shape)
    length, complex_input = shape[axis], shape[-1] == 2
    bins = size // 2 + 1 if onesided and not inverse else size
    cos, sin = _matrices(length, size, bins, inverse, onesided, dtype)
    real = b.take(x, 0, rank - 1)
    imaginary = b.take(x, 1, rank - 1) if complex_input else None
    perm = [d for d in range(rank - 1) if d != axis] + [axis]
    back = [perm.index(d) for d in range(rank - 1)]
    real = b.op("Transpose", real, perm=perm)
    imaginary = b.op("Transpose", imaginary, perm=perm) if imaginary else None
    sign = 1.0 if inverse else -1.0  # e^(sign * i * angle) = cos + sign * i * sin
    # (a + ib)(cos + s i sin) = a cos - s b sin + i (s a sin + b cos)
    out_real = b.op("MatMul", real, b.const(cos))
    out_imag = b.op("MatMul", real, b.const(sign * sin))
    if imaginary:
        out_real = b.op("Add", out_real, b.op("MatMul", imaginary, b.const(-sign * sin)))
        out_imag = b.op("Add", out_imag, b.op("MatMul", imaginary, b.const(cos)))
    if inverse and onesided:  # irfft: a real signal
        b.op("Transpose", b.unsqueeze(out_real, rank - 1), out=out, perm=back + [rank - 1])
        return
    b.op("Transpose", b.stack([out_real, out_imag], rank - 1), out=out, perm=back + [rank - 1])


def lower_dft(node, facts: GraphFacts) -> NodeBuilder:
    """DFT as MatMuls with constant cosine and sine matrices."""
    attrs = attributes(node)
    shape = facts.static_shape(node.input[0], "DFT", "input")
    inputs = list(node.input) + [""] * (3 - len(node.input))
    if facts.opset >= 20:
        axis = constant_int(facts, inputs[2], "DFT", "axis", -2)
    else:
        axis = attrs.get("axis", 1)
    axis %= len(shape)
    if axis == len(shape) - 1:
        raise CannotLower("its axis is the real/imaginary axis")
    inverse, onesided = bool(attrs.get("inverse", 0)), bool(attrs.get("onesided", 0))
    default = 2 * (shape[axis] - 1) if inverse and onesided else shape[axis]
    size = constant_int(facts, inputs[1], "DFT", "dft_length", default)
    if max(size, shape[axis]) > MAX_DFT_LENGTH:
        raise CannotLower(f"a length of {size} is more than the {MAX_DFT_LENGTH} edgepack makes matrices for")
    if inverse and onesided and shape[-1] != 2:
        raise CannotLower("an inverse onesided DFT needs a complex input")
    b = NodeBuilder(f"{node.output[0]}__dft", facts.opset)
    _dft(b, node.input[0], shape, axis, size, inverse, onesided, facts.np_dtype(node.input[0]), node.output[0])
    return b


def lower_stft(node, facts: GraphFacts) -> NodeBuilder:
    """STFT as frames gathered from the signal, windowed, and a DFT of each frame."""
    attrs = attributes(node)
    inputs = list(node.input) + [""] * (4 - len(node.input))
    batch, length, parts = facts.static_shape(inputs[0], "STFT", "signal")
    step = constant_int(facts, inputs[1], "STFT", "frame_step")
    if inputs[3]:
        frame = constant_int(facts, inputs[3], "STFT", "frame_length")
    elif inputs[2]:
        frame = facts.static_shape(inputs[2], "STFT", "window")[0]
    else:
        frame = length
    if frame > MAX_DFT_LENGTH:
        raise CannotLower(f"a frame of {frame} is more than the {MAX_DFT_LENGTH} edgepack makes matrices for")
    frames = 1 + (length - frame) // step
    dtype = facts.np_dtype(inputs[0])
    b = NodeBuilder(f"{node.output[0]}__stft", facts.opset)
    starts = np.arange(frames, dtype=np.int64).reshape(-1, 1) * step + np.arange(frame, dtype=np.int64).reshape(1, -1)
    framed = b.op("Gather", inputs[0], b.const(starts), axis=1)  # [batch, frames, frame, parts]
    if inputs[2]:
        framed = b.op("Mul", framed, b.op("Reshape", inputs[2], b.const(np.array([1, 1, frame, 1], np.int64))))
    onesided = bool(attrs.get("onesided", 1))
    _dft(b, framed, (batch, frames, frame, parts), 2, frame, False, onesided, dtype, node.output[0])
    return b
