"""Rule student: a decision tree fitted to the teacher's predictions, exported as a tensor program.

The tree becomes plain ONNX in the GEMM formulation (Hummingbird's "GEMM" strategy): with A the
one-hot feature selector of the decision nodes, B their thresholds, C the node × leaf path matrix
(+1 where the leaf lies left of the node, -1 right) and D the count of left turns on each leaf's
path, a sample x reaches leaf l exactly when ((x·A ≤ B) · C)_l = D_l, and the one-hot leaf row
times E (each leaf's class probabilities) gives the scores. Flatten, MatMul, LessOrEqual, Cast and
Equal are all TVM frontend ops, so the tree compiles and ships like any network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgepack.compression.distill.program import FEATURES, feature_names, float32_at_most, write_program
from edgepack.errors import EdgepackError, InternalError
from edgepack.runtime.bundle_format import TensorSpec

OUTPUT_NAME = "probabilities"


@dataclass(frozen=True)
class TreeStudentConfig:
    """A depth- and leaf-limited sklearn DecisionTreeClassifier fitted to the teacher's top-1 classes."""

    max_depth: int | None = 8
    max_leaf_nodes: int | None = None
    min_samples_leaf: int = 1
    criterion: str = "gini"
    seed: int = 0
    augment: int = 0  # extra samples: training samples plus Gaussian noise, labelled by the teacher
    noise: float = 0.5  # that noise's standard deviation, as a fraction of each feature's

    kind = "tree"

    def check(self) -> None:
        for label, value, least in (("--max-depth", self.max_depth, 1), ("--max-leaf-nodes", self.max_leaf_nodes, 2),
                                    ("--min-samples-leaf", self.min_samples_leaf, 1)):
            if value is not None and value < least:
                raise EdgepackError(f"{label} {value} is below {least}", f"pass {label} {least} or more")
        if self.augment < 0 or self.noise < 0:
            raise EdgepackError(f"--augment {self.augment} / --noise {self.noise} is negative", "pass 0 or more")
        if self.criterion not in ("gini", "entropy", "log_loss"):
            raise EdgepackError(f"unknown tree criterion '{self.criterion}'", "use one of gini, entropy, log_loss")

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


def flatten_samples(stacks: tuple[np.ndarray, ...]) -> np.ndarray:
    """The one input's samples as rows of float32 features."""
    if len(stacks) != 1:
        raise EdgepackError(f"a tree student takes one input tensor, the teacher has {len(stacks)}",
                            "distill a network student (--student file.py:factory) for multi-input teachers")
    return stacks[0].reshape(len(stacks[0]), -1).astype(np.float32)


def augmented(stack: np.ndarray, config: TreeStudentConfig) -> np.ndarray:
    """`config.augment` noisy copies of random training samples, for the teacher to label."""
    rng = np.random.default_rng(config.seed)
    chosen = stack[rng.integers(0, len(stack), config.augment)]
    scale = stack.std(axis=0, keepdims=True) * config.noise
    return (chosen + rng.standard_normal(chosen.shape) * scale).astype(stack.dtype)


def fit_tree(features: np.ndarray, classes: np.ndarray, config: TreeStudentConfig):
    """Fit the tree to the teacher's classes (sklearn compares float32 features with float64 thresholds)."""
    from sklearn.tree import DecisionTreeClassifier

    tree = DecisionTreeClassifier(max_depth=config.max_depth, max_leaf_nodes=config.max_leaf_nodes,
                                  min_samples_leaf=config.min_samples_leaf, criterion=config.criterion,
                                  random_state=config.seed)
    tree.fit(features, classes)
    if tree.tree_.node_count < 3:
        raise EdgepackError("the tree has no split: the teacher predicts one class on all the training data",
                            "pass training data on which the teacher predicts several classes")
    return tree


def tree_predict(tree, features: np.ndarray) -> np.ndarray:
    """The tree's own predictions: class indices of the teacher's outputs."""
    return tree.predict(features.astype(np.float32)).astype(np.int64)


@dataclass(frozen=True)
class TreeMatrices:
    """The GEMM formulation's constant tensors."""

    selector: np.ndarray  # A: features × nodes, one-hot columns
    thresholds: np.ndarray  # B: nodes
    paths: np.ndarray  # C: nodes × leaves, +1 left subtree, -1 right subtree
    left_turns: np.ndarray  # D: leaves
    leaf_values: np.ndarray  # E: leaves × classes
    leaves: tuple[int, ...]  # sklearn node ids of the leaves, in column order

    @property
    def elements(self) -> int:
        return sum(int(m.size) for m in (self.selector, self.thresholds, self.paths, self.left_turns, self.leaf_values))


def tree_matrices(tree, n_features: int, n_classes: int) -> TreeMatrices:
    """Turn a fitted sklearn tree into A, B, C, D, E; each leaf's float32 argmax equals its float64 one."""
    structure = tree.tree_
    left, right = structure.children_left, structure.children_right
    internal = [node for node in range(structure.node_count) if left[node] != -1]
    leaves = [node for node in range(structure.node_count) if left[node] == -1]
    column = {node: index for index, node in enumerate(internal)}
    leaf_column = {node: index for index, node in enumerate(leaves)}
    selector = np.zeros((n_features, len(internal)), np.float32)
    thresholds = np.zeros(len(internal), np.float32)
    for node in internal:
        selector[structure.feature[node], column[node]] = 1.0
        thresholds[column[node]] = float32_at_most(float(structure.threshold[node]))
    paths = np.zeros((len(internal), len(leaves)), np.float32)
    left_turns = np.zeros(len(leaves), np.float32)
    stack = [(0, [])]
    while stack:
        node, path = stack.pop()
        if left[node] == -1:
            for ancestor, went_left in path:
                paths[column[ancestor], leaf_column[node]] = 1.0 if went_left else -1.0
            left_turns[leaf_column[node]] = sum(went_left for _, went_left in path)
            continue
        stack.append((right[node], path + [(node, False)]))
        stack.append((left[node], path + [(node, True)]))
    classes = tree.classes_.astype(np.int64)
    if classes.min() < 0 or classes.max() >= n_classes:
        raise InternalError(f"tree classes {classes.tolist()} outside the teacher's {n_classes} outputs")
    values64 = structure.value[leaves, 0, :].astype(np.float64)
    values64 = values64 / values64.sum(axis=1, keepdims=True)
    leaf_values = np.zeros((len(leaves), n_classes), np.float32)
    leaf_values[:, classes] = values64.astype(np.float32)
    for row in range(len(leaves)):  # float32 rounding must not change which class a leaf predicts
        want = classes[int(np.argmax(values64[row]))]
        while int(np.argmax(leaf_values[row])) != want:
            leaf_values[row, want] = np.nextafter(leaf_values[row, want], np.float32(np.inf))
    return TreeMatrices(selector, thresholds, paths, left_turns, leaf_values, tuple(leaves))


def tree_to_onnx(matrices: TreeMatrices, spec: TensorSpec, path: Path, doc: str = "", version: str | None = None) -> Path:
    """Write the tree as an ONNX tensor program taking the teacher's input `spec`; returns `path`."""
    from onnx import TensorProto, helper

    constants = {"A": matrices.selector, "B": matrices.thresholds, "C": matrices.paths, "D": matrices.left_turns,
                 "E": matrices.leaf_values}
    nodes = [
        helper.make_node("MatMul", [FEATURES, "A"], ["selected"]),  # x·A: each node's feature
        helper.make_node("LessOrEqual", ["selected", "B"], ["goes_left"]),
        helper.make_node("Cast", ["goes_left"], ["turns"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["turns", "C"], ["path_score"]),
        helper.make_node("Equal", ["path_score", "D"], ["at_leaf"]),  # exactly one leaf per sample
        helper.make_node("Cast", ["at_leaf"], ["leaf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["leaf", "E"], [OUTPUT_NAME]),
    ]
    return write_program(nodes, constants, spec, OUTPUT_NAME, matrices.leaf_values.shape[1], path, "decision_tree", doc, version)


def rule_listing(tree, matrices: TreeMatrices, spec: TensorSpec, header: list[str]) -> str:
    """One if/then rule per leaf, conditions on one feature merged into a range, in path order.

    Thresholds are the exact float32 values the tensor program compares with (x ≤ t goes left)."""
    structure = tree.tree_
    left, right = structure.children_left, structure.children_right
    names = feature_names(spec)
    conditions: dict[int, list[tuple[int, bool, np.float32]]] = {}
    stack = [(0, [])]
    while stack:
        node, path = stack.pop()
        if left[node] == -1:
            conditions[node] = path
            continue
        threshold = float32_at_most(float(structure.threshold[node]))
        stack.append((right[node], path + [(int(structure.feature[node]), False, threshold)]))
        stack.append((left[node], path + [(int(structure.feature[node]), True, threshold)]))
    lines = [f"# {line}" for line in header]
    lines.append("# a sample matches exactly one rule; thresholds are float32 and exact ('x <= t' means at most t)")
    for number, (leaf, column) in enumerate(zip(matrices.leaves, range(len(matrices.leaves))), start=1):
        bounds: dict[int, list] = {}
        for feature, went_left, threshold in conditions[leaf]:
            low, high = bounds.setdefault(feature, [None, None])
            if went_left:
                bounds[feature][1] = threshold if high is None else min(high, threshold)
            else:
                bounds[feature][0] = threshold if low is None else max(low, threshold)
        parts = []
        for feature in bounds:  # in the order the path tests them, root first
            low, high = bounds[feature]
            if low is not None and high is not None:
                parts.append(f"{low} < {names[feature]} <= {high}")
            elif high is not None:
                parts.append(f"{names[feature]} <= {high}")
            else:
                parts.append(f"{names[feature]} > {low}")
        values = matrices.leaf_values[column]
        predicted = int(np.argmax(values))
        condition = " and ".join(parts) if parts else "true"
        samples = int(structure.n_node_samples[leaf])
        lines.append(f"rule {number}: if {condition} then class {predicted}  "
                     f"(p={float(values[predicted]):.3f}, {samples} training sample{'s' if samples != 1 else ''})")
    return "\n".join(lines) + "\n"
