"""Channel shuffles removed by algebra, not by copying (issue #17 item 4), on the ONNX graph TVM imports.

A channel shuffle (`Reshape [N, g, C/g, ...]` → `Transpose [0, 2, 1, ...]` → `Reshape [N, C, ...]`) is a constant
permutation of axis 1. Here every tensor on the channel path is tracked as a *channel list*: logical channel j is
channel k of physical tensor s. Shuffles, `Split`/`Slice` on channels and `Concat` only reorder, cut and join
lists, so they emit nothing. A consumer takes a list through the cheapest exact form of it:

- a convolution (one group) takes the channels sorted by source (a `Slice`, or one `Concat` of slices: one copy,
  none when the list is one whole tensor) and the remaining permutation goes into its weights' input-channel axis;
- a depthwise convolution, per-channel element-wise ops (ReLU, pooling, `Add`/`Mul` by a per-channel constant,
  BatchNorm) run on the sorted channels with their per-channel constants permuted, and their result stays a list;
  so does `Add`/`Mul` of two lists whose tensors line up channel for channel (a residual of two such branches);
- anything else (a graph output, an op without a rule) gets the exact tensor: the sorted channels and, if they are
  not already in order, one `Gather` on axis 1: that shuffle is counted as kept, not removed.

ShuffleNetV2's kept half then never moves: each unit copies only the half its branch convolution reads.

The same lists pad channels: with a channel multiple (the target's channel block), a one-group convolution whose
output channels miss it by at most MAX_PADDING gets zero filters up to it (ShuffleNetV2's 58 -> 64, 116 -> 128,
232 -> 240 at 16 lanes), and its result is a list over the wider tensor: per-channel ops run on all of it (pad
constants 0, a BatchNorm variance 1, so pad channels stay finite), a convolution gives the pad channels zero
weights, and only a Slice, Concat or exact consumer drops them. Those convolutions otherwise fall back to an
untiled schedule (edgepack.compiler.schedules needs the channels in whole vectors): 1x1 58 -> 58 at 28x28 took
0.75 ms, 58 -> 64 0.10 ms, one thread, x86-64-v4.

Done on the ONNX graph rather than in Relax before `ConvertLayout`: the weights are initializers here (numpy, in
Relax they are runtime params), shapes are static after pre-flight, and ONNX Runtime runs either graph. It runs
as TVM imports the pre-flighted model (edgepack.compiler.compile.import_relax), not in pre-flight: the bundle's
reference model and golden outputs stay those of the model as given, so the golden check tests this rewrite too."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ops whose output channel c depends only on input channel c (first input; others are scalars or attributes)
_PER_CHANNEL = {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Softplus", "Clip",
                "Identity", "Neg", "Abs", "Exp", "Sqrt", "Erf", "MaxPool", "AveragePool", "GlobalAveragePool",
                "GlobalMaxPool", "Dropout"}
_BINARY = {"Add", "Sub", "Mul", "Div"}
#: output channels of a one-group convolution are padded to the target's channel block (58 -> 64, 116 -> 128) where
#: that adds at most this factor: a 1x1 convolution of 58 or 116 ran ~7x slower per FLOP than one of 64 or 128
MAX_PADDING = 1.125


@dataclass(frozen=True)
class ShuffleReport:
    """How many channel shuffles were found, how many were removed (absorbed), the `Gather`s left, and how many
    convolutions got zero filters up to the channel block."""

    found: int
    removed: int
    gathers: int
    padded_convs: int = 0

    def to_json(self) -> dict:
        return {"found": self.found, "removed": self.removed, "gathers": self.gathers, "padded_convs": self.padded_convs}


@dataclass(frozen=True)
class _Channels:
    """A logical tensor: channel j is channel `channel[j]` of physical tensor `sources[source[j]]`."""

    sources: tuple[str, ...]
    source: np.ndarray
    channel: np.ndarray
    shuffles: frozenset  # the shuffles that reordered these channels (kept ones are not counted as removed)

    def repeats(self) -> bool:
        """Whether a physical channel is listed twice (per-channel constants could then differ between the two)."""
        return len(np.unique(np.stack([self.source, self.channel]), axis=1)[0]) != len(self.source)

    def take(self, index) -> "_Channels":
        return _Channels(self.sources, self.source[index], self.channel[index], self.shuffles)


class _Rewriter:
    def __init__(self, model, channel_multiple: int = 0):
        from onnx import numpy_helper

        from edgepack.frontends.fold import _static_shapes

        self.graph = model.graph
        self.shapes = _static_shapes(model)
        self.weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        self.constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                          if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"}
        self.lists: dict[str, _Channels] = {}
        self.channel_multiple = channel_multiple
        self.padded: set[str] = set()  # physical tensors with zero channels no list refers to
        self.padded_convs = 0
        self.nodes: list = []
        self.new_weights: list = []
        self.sorted_cache: dict = {}
        self.small_constants: dict = {}
        self.exact: dict[str, str] = {}
        self.kept: set = set()
        self.counter = 0

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}__unshuffled{self.counter}"

    def constant(self, value: np.ndarray, stem: str, initializer: bool = False) -> str:
        from onnx import helper, numpy_helper

        key = (value.dtype.str, value.shape, value.tobytes())
        if not initializer and key in self.small_constants:
            return self.small_constants[key]
        name = self.fresh(stem)
        if not initializer:
            self.small_constants[key] = name
        if initializer:
            self.new_weights.append(numpy_helper.from_array(value, name))
            self.weights[name] = value
        else:
            self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name)))
        return name

    def channels_of(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return shape[1] if shape and len(shape) >= 2 else None

    def as_list(self, name: str) -> _Channels | None:
        if name in self.lists:
            return self.lists[name]
        count = self.channels_of(name)
        if count is None:
            return None
        return _Channels((name,), np.zeros(count, np.int64), np.arange(count), frozenset())

    def sorted_tensor(self, channels: _Channels, stem: str, superset: bool = False) -> tuple[str, np.ndarray]:
        """The distinct channels grouped by source (in order of first use) and sorted within each, as one tensor
        (Slices and a Concat where needed); returns it and where each logical channel is in it (a channel listed
        twice is there once). With `superset`, a padded tensor whose channels are (nearly) all listed is taken as
        it is, pad channels and all: the consumer gives those zero weights."""
        from onnx import helper

        if superset and len(channels.sources) == 1 and channels.sources[0] in self.padded:
            name = channels.sources[0]
            if self.channels_of(name) <= MAX_PADDING * len(np.unique(channels.channel)):
                return name, channels.channel.copy()

        pairs = np.stack([_first_use_rank(channels.source), channels.channel], axis=1)
        distinct, position = np.unique(pairs, axis=0, return_inverse=True)
        position = position.reshape(-1)
        first_use = {rank: source for rank, source in zip(pairs[:, 0].tolist(), channels.source.tolist())}
        sources = np.array([first_use[rank] for rank in distinct[:, 0].tolist()], np.int64)
        key = (channels.sources, tuple(sources), tuple(distinct[:, 1]))
        if key in self.sorted_cache:
            return self.sorted_cache[key], position
        pieces = []
        for source, first, last in _runs(sources, distinct[:, 1]):
            name = channels.sources[source]
            if first == 0 and last == self.channels_of(name):
                pieces.append(name)
                continue
            sliced = self.fresh(stem)
            ends = [self.constant(np.array([v], np.int64), f"{stem}_bound") for v in (first, last, 1)]
            self.nodes.append(helper.make_node("Slice", [name, *ends], [sliced]))
            self.shapes[sliced] = (self.shapes[name][0], last - first, *self.shapes[name][2:])
            pieces.append(sliced)
        if len(pieces) == 1:
            result = pieces[0]
        else:
            result = self.fresh(stem)
            self.nodes.append(helper.make_node("Concat", pieces, [result], axis=1))
            first_shape = self.shapes[pieces[0]]
            self.shapes[result] = (first_shape[0], len(distinct), *first_shape[2:])
        self.sorted_cache[key] = result
        return result, position

    def materialize(self, name: str) -> None:
        """Make the list `name` a real tensor of that name (sorted channels, then one Gather if out of order)."""
        from onnx import helper

        if name not in self.lists or name in self.exact:
            return
        channels = self.lists[name]
        tensor, position = self.sorted_tensor(channels, name)
        if np.array_equal(position, np.arange(len(position))):
            self.nodes.append(helper.make_node("Identity", [tensor], [name]))
        else:
            self.kept |= channels.shuffles
            indices = self.constant(position.astype(np.int64), f"{name}_order")
            self.nodes.append(helper.make_node("Gather", [tensor, indices], [name], axis=1))
        self.exact[name] = name

    def rewrite(self, node) -> None:
        from onnx import helper

        lazy = [name for name in node.input if name in self.lists]
        if node.op_type == "Reshape" and node.output[0] in self.shuffle_outputs:
            self.shuffle(node)
            return
        if node.op_type in ("Reshape", "Transpose") and node.output[0] in self.shuffle_inner:
            return
        if not lazy:
            weight = self.weights.get(node.input[1]) if node.op_type == "Conv" else None
            if weight is not None and self.padding(node, weight.shape[0]) > weight.shape[0]:
                self.emit_conv(node, node.input[0], weight, {a.name: helper.get_attribute_value(a) for a in node.attribute})
            else:
                self.nodes.append(node)
            return
        handled = self.rule(node, lazy)
        if not handled:
            for name in lazy:
                self.materialize(name)
            self.nodes.append(node)

    def shuffle(self, node) -> None:
        source, groups = self.shuffle_outputs[node.output[0]]
        channels = self.as_list(source)
        count = len(channels.source)
        j = np.arange(count)
        permutation = (j % groups) * (count // groups) + j // groups
        shuffled = channels.take(permutation)
        self.lists[node.output[0]] = _Channels(shuffled.sources, shuffled.source, shuffled.channel,
                                               shuffled.shuffles | {node.output[0]})

    def rule(self, node, lazy: list[str]) -> bool:
        from onnx import helper

        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        op = node.op_type
        if op == "Split" and _axis(attributes, self.shapes.get(node.input[0])) == 1:
            return self.split(node)
        if op == "Slice" and len(lazy) == 1 and lazy[0] == node.input[0]:
            return self.slice(node)
        if op == "Concat" and _axis(attributes, self.shapes.get(node.input[0])) == 1:
            return self.concat(node)
        if op == "Conv" and lazy == [node.input[0]]:
            return self.conv(node, attributes)
        if op == "BatchNormalization" and lazy == [node.input[0]] and len(node.output) == 1:
            return self.per_channel(node, list(range(1, 5)))
        if op in _PER_CHANNEL and lazy == [node.input[0]] and len(node.output) == 1:
            return self.per_channel(node, [])
        if op in _BINARY and len(lazy) == 1:
            return self.binary(node, lazy[0])
        if op in _BINARY and len(lazy) == 2 and len(set(lazy)) == 2:
            return self.both_lists(node)
        return False

    def split(self, node) -> bool:
        channels = self.lists[node.input[0]]
        sizes = [self.channels_of(name) for name in node.output]
        if None in sizes or sum(sizes) != len(channels.source):
            return False
        start = 0
        for name, size in zip(node.output, sizes):
            self.lists[name] = channels.take(slice(start, start + size))
            start += size
        return True

    def slice(self, node) -> bool:
        values = [self.constants.get(name) for name in node.input[1:]]
        if len(values) < 2 or any(v is None for v in values):
            return False
        starts, ends = values[0], values[1]
        axes = values[2] if len(values) > 2 else np.arange(len(starts))
        steps = values[3] if len(values) > 3 else np.ones(len(starts), np.int64)
        rank = len(self.shapes.get(node.input[0], ()))
        if len(axes) != 1 or (int(axes[0]) + rank if int(axes[0]) < 0 else int(axes[0])) != 1 or int(steps[0]) != 1:
            return False
        count = len(self.lists[node.input[0]].source)
        first, last = (max(0, min(count, int(v) + count if int(v) < 0 else int(v))) for v in (starts[0], ends[0]))
        self.lists[node.output[0]] = self.lists[node.input[0]].take(slice(first, max(first, last)))
        return True

    def concat(self, node) -> bool:
        parts = [self.as_list(name) for name in node.input]
        if any(part is None for part in parts):
            return False
        sources: list[str] = []
        source, channel = [], []
        for part in parts:
            remap = np.array([_index(sources, name) for name in part.sources], np.int64)
            source.append(remap[part.source])
            channel.append(part.channel)
        shuffles = frozenset().union(*(part.shuffles for part in parts))
        self.lists[node.output[0]] = _Channels(tuple(sources), np.concatenate(source), np.concatenate(channel), shuffles)
        return True

    def conv(self, node, attributes: dict) -> bool:

        weight = self.weights.get(node.input[1])
        groups = attributes.get("group", 1)
        channels = self.lists[node.input[0]]
        if weight is None or node.output[0] not in self.shapes:
            return False
        count = len(channels.source)
        if groups == 1 and weight.shape[1] == count:
            tensor, position = self.sorted_tensor(channels, node.input[0], superset=True)
            permuted = np.zeros((weight.shape[0], self.channels_of(tensor), *weight.shape[2:]), weight.dtype)
            np.add.at(permuted, (slice(None), position), weight)  # a channel listed twice: its weights summed
            self.emit_conv(node, tensor, permuted, attributes)
            return True
        if groups == count == weight.shape[0] and weight.shape[1] == 1:
            return self.per_channel(node, list(range(1, len(node.input))))
        return False

    def padding(self, node, outputs: int) -> int:
        """Output channels a one-group Conv gets: `outputs` rounded up to the channel multiple where that adds
        at most MAX_PADDING and its weight and bias are initializers, else `outputs`."""
        if not self.channel_multiple or node.op_type != "Conv" or node.input[1] not in self.weights \
                or (len(node.input) > 2 and node.input[2] and node.input[2] not in self.weights) \
                or node.output[0] not in self.shapes or any(a.name == "group" and a.i != 1 for a in node.attribute):
            return outputs
        padded = -(-outputs // self.channel_multiple) * self.channel_multiple
        return padded if padded <= MAX_PADDING * outputs else outputs

    def emit_conv(self, node, tensor: str, weight: np.ndarray, attributes: dict) -> None:
        """A one-group Conv of `tensor` by `weight`, its output channels padded with zero filters to the channel
        multiple where that costs at most MAX_PADDING (its result is then a list over the padded tensor)."""
        from onnx import helper

        outputs = weight.shape[0]
        padded = self.padding(node, outputs)
        if padded == outputs:
            if tensor == node.input[0] and weight is self.weights.get(node.input[1]):
                self.nodes.append(node)
            else:
                name = self.constant(weight, node.input[1], initializer=True)
                self.nodes.append(helper.make_node("Conv", [tensor, name, *node.input[2:]], list(node.output), name=node.name,
                                                   **attributes))
            return
        bias = self.weights.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        shape = self.shapes[node.output[0]]
        pad = [(0, padded - outputs)] + [(0, 0)] * (weight.ndim - 1)
        inputs = [tensor, self.constant(np.pad(weight, pad), node.input[1], initializer=True)]
        if bias is not None:
            inputs.append(self.constant(np.pad(bias, (0, padded - outputs)), node.input[2], initializer=True))
        out = self.fresh(node.output[0])
        self.nodes.append(helper.make_node("Conv", inputs, [out], name=node.name, **attributes))
        self.shapes[out] = (shape[0], padded, *shape[2:])
        self.padded.add(out)
        self.padded_convs += 1
        self.lists[node.output[0]] = _Channels((out,), np.zeros(outputs, np.int64), np.arange(outputs), frozenset())

    def per_channel(self, node, per_channel_inputs: list[int]) -> bool:
        """The node on the sorted channels, its per-channel constants (inputs at those positions) permuted alike
        (pad channels: 0, and 1 for a BatchNorm's variance)."""
        from onnx import helper

        channels = self.lists[node.input[0]]
        constants = [self.weights.get(node.input[i]) for i in per_channel_inputs if node.input[i]]
        shape = self.shapes.get(node.output[0])
        if shape is None or channels.repeats() or any(value is None or value.shape[0] != len(channels.source) for value in constants):
            return False
        tensor, position = self.sorted_tensor(channels, node.input[0], superset=True)
        width = self.channels_of(tensor)
        inputs = [tensor, *node.input[1:]]
        for i in per_channel_inputs:
            if node.input[i]:
                value = self.weights[node.input[i]]
                permuted = np.full((width, *value.shape[1:]), 1 if node.op_type == "BatchNormalization" and i == 4 else 0, value.dtype)
                permuted[position] = value
                inputs[i] = self.constant(permuted, node.input[i], initializer=True)
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            attributes["group"] = width
        out = self.fresh(node.output[0])
        self.nodes.append(helper.make_node(node.op_type, inputs, [out], domain=node.domain, **attributes))
        self.shapes[out] = (shape[0], width, *shape[2:])
        if width > len(np.unique(position)):
            self.padded.add(out)
        self.lists[node.output[0]] = _Channels((out,), np.zeros(len(position), np.int64), position, channels.shuffles)
        return True

    def binary(self, node, lazy: str) -> bool:
        """Add/Sub/Mul/Div by a constant that is a scalar or per-channel (broadcast along axis 1)."""
        from onnx import helper

        other_index = 1 if node.input[0] == lazy else 0
        other = self.weights.get(node.input[other_index], self.constants.get(node.input[other_index]))
        rank = len(self.shapes.get(lazy, ()))
        channels = self.lists[lazy]
        if other is None or rank < 2 or other.ndim > rank or channels.repeats():
            return False
        full = other.reshape((1,) * (rank - other.ndim) + other.shape)
        if any(size != 1 for axis, size in enumerate(full.shape) if axis != 1) or full.shape[1] not in (1, len(channels.source)):
            return False
        tensor, position = self.sorted_tensor(channels, lazy, superset=node.op_type != "Div")
        width = self.channels_of(tensor)
        inputs = list(node.input)
        inputs[1 - other_index] = tensor
        if full.shape[1] > 1:
            permuted = np.zeros((1, width, *full.shape[2:]), full.dtype)
            permuted[:, position] = full
            inputs[other_index] = self.constant(permuted, node.input[other_index], initializer=True)
        out = self.fresh(node.output[0])
        self.nodes.append(helper.make_node(node.op_type, inputs, [out]))
        self.shapes[out] = self.shapes[tensor]
        if width > len(np.unique(position)):
            self.padded.add(out)
        self.lists[node.output[0]] = _Channels((out,), np.zeros(len(position), np.int64), position, channels.shuffles)
        return True

    def both_lists(self, node) -> bool:
        """Add/Sub/Mul/Div of two lists whose tensors line up channel for channel (a residual Add of two padded
        convolutions): the op on those tensors, its result a list alike."""
        from onnx import helper

        left, right = self.lists[node.input[0]], self.lists[node.input[1]]
        if len(left.source) != len(right.source) or left.repeats() or right.repeats():
            return False
        superset = node.op_type != "Div"
        (a, position), (b, other) = (self.sorted_tensor(left, node.input[0], superset),
                                     self.sorted_tensor(right, node.input[1], superset))
        if self.shapes.get(a) != self.shapes.get(b) or not np.array_equal(position, other):
            return False  # the slices made for them are dropped as unused if the exact tensors are taken instead
        out = self.fresh(node.output[0])
        self.nodes.append(helper.make_node(node.op_type, [a, b], [out]))
        self.shapes[out] = self.shapes[a]
        if self.channels_of(a) > len(position):
            self.padded.add(out)
        self.lists[node.output[0]] = _Channels((out,), np.zeros(len(position), np.int64), position,
                                               left.shuffles | right.shuffles)
        return True

    def find_shuffles(self) -> None:
        """Reshape [N, g, C/g, ...] → Transpose [0, 2, 1, ...] → Reshape back to the input's shape, inner results
        used once: output name -> (input name, g)."""
        consumers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        outputs = {value.name for value in self.graph.output}
        self.shuffle_outputs, self.shuffle_inner = {}, set()
        for node in self.graph.node:
            if node.op_type != "Reshape":
                continue
            source, split = node.input[0], self.shapes.get(node.output[0])
            shape = self.shapes.get(source)
            if not shape or not split or len(shape) < 3 or len(split) != len(shape) + 1 or split[0] != shape[0] \
                    or split[1] * split[2] != shape[1] or split[3:] != shape[2:]:
                continue
            transposes = consumers.get(node.output[0], [])
            if len(transposes) != 1 or transposes[0].op_type != "Transpose" or node.output[0] in outputs:
                continue
            transpose = transposes[0]
            perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
            if perm != [0, 2, 1, *range(3, len(split))] or transpose.output[0] in outputs:
                continue
            backs = consumers.get(transpose.output[0], [])
            if len(backs) != 1 or backs[0].op_type != "Reshape" or self.shapes.get(backs[0].output[0]) != shape:
                continue
            self.shuffle_outputs[backs[0].output[0]] = (source, split[1])
            self.shuffle_inner |= {node.output[0], transpose.output[0]}


def _first_use_rank(source: np.ndarray) -> np.ndarray:
    """Each entry's source numbered by the order sources first appear in."""
    _, first = np.unique(source, return_index=True)
    rank = np.empty(int(source.max()) + 1 if len(source) else 0, np.int64)
    rank[np.unique(source)] = np.argsort(np.argsort(first))
    return rank[source]


def _runs(source: np.ndarray, channel: np.ndarray) -> list[tuple[int, int, int]]:
    """(source, first, last + 1) for each run of consecutive channels of one source."""
    runs = []
    for s, c in zip(source.tolist(), channel.tolist()):
        if runs and runs[-1][0] == s and runs[-1][2] == c:
            runs[-1][2] = c + 1
        else:
            runs.append([s, c, c + 1])
    return [tuple(run) for run in runs]


def _index(items: list[str], name: str) -> int:
    if name not in items:
        items.append(name)
    return items.index(name)


def _axis(attributes: dict, shape) -> int | None:
    axis = attributes.get("axis", 0)
    if axis < 0:
        return axis + len(shape) if shape else None
    return axis


def remove_channel_shuffles(model, channel_multiple: int = 0):
    """The model (changed in place) with its channel shuffles absorbed as described in the module docstring and,
    with a `channel_multiple` (the target's channel block), one-group convolutions padded to it where MAX_PADDING
    allows; needs static shapes (run shape inference first). Returns (model, ShuffleReport)."""
    from edgepack.frontends.fold import _live

    if any(a.HasField("g") or len(a.graphs) for node in model.graph.node for a in node.attribute):
        return model, ShuffleReport(0, 0, 0)  # subgraphs may read any name: left as they are
    rewriter = _Rewriter(model, channel_multiple)
    rewriter.find_shuffles()
    pads = any(rewriter.padding(node, rewriter.weights[node.input[1]].shape[0]) > rewriter.weights[node.input[1]].shape[0]
               for node in model.graph.node if node.op_type == "Conv" and node.input[1] in rewriter.weights)
    if not rewriter.shuffle_outputs and not pads:
        return model, ShuffleReport(0, 0, 0)
    for node in model.graph.node:
        rewriter.rewrite(node)
    for value in model.graph.output:
        rewriter.materialize(value.name)
    graph = model.graph
    live = _live(rewriter.nodes, {value.name for value in graph.output})
    del graph.node[:]
    graph.node.extend(live)
    graph.initializer.extend(rewriter.new_weights)
    used = {name for node in live for name in node.input}
    kept_initializers = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)
    produced = {name for node in live for name in node.output} | {value.name for value in graph.input}
    kept_info = [value for value in graph.value_info if value.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    gathers = sum(node.op_type == "Gather" and "__unshuffled" in node.input[1] for node in live)
    found = len(rewriter.shuffle_outputs)
    return model, ShuffleReport(found, found - len(rewriter.kept), gathers, rewriter.padded_convs)
