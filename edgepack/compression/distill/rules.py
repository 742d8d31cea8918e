"""Rule-set student: an ordered list of if-then rules (a decision list) read off a shallow forest.

Every node of a small random forest of depth ≤ `max_conditions`, fitted to the teacher's classes,
is a candidate rule (the conjunction of the conditions on its path, merged per feature). Sequential
covering picks, up to `max_rules − 1` times, the candidate that is right most often and wrong least
on the samples no earlier rule covers, predicting their majority class; the last rule is the
default. Each threshold is then rounded to the fewest decimals that leave every training
prediction unchanged, and the list compiles to a tensor program: conditions by a one-hot MatMul and
LessOrEqual, rules that fire by a count, the first rule that fires by a strictly-upper-triangular
MatMul, its class by a one-hot MatMul. Comparisons are float32 against the exact float32 value of
each printed decimal, so the program and `rules.txt` give the same answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgepack.compression.distill.program import FEATURES, float32_at_most, write_program
from edgepack.errors import EdgepackError

OUTPUT_NAME = "class_scores"
WRONG_WEIGHT = 3  # a rule's score: samples it gets right − 3 × samples it gets wrong
MAX_DECIMALS = 6


@dataclass(frozen=True)
class RuleSetStudentConfig:
    """A decision list of at most `max_rules` rules (default included) of at most `max_conditions` conditions."""

    max_rules: int = 24
    max_conditions: int = 3
    trees: int = 40
    min_support: int = 3  # training samples a rule must cover at least
    seed: int = 0
    augment: int = 0
    noise: float = 0.5
    feature_names: Path | None = field(default=None, compare=False)

    kind = "rules"

    def check(self) -> None:
        for label, value, least in (("--max-rules", self.max_rules, 2), ("--max-conditions", self.max_conditions, 1),
                                    ("--trees", self.trees, 1), ("--min-support", self.min_support, 1)):
            if value < least:
                raise EdgepackError(f"{label} {value} is below {least}", f"pass {label} {least} or more")
        if self.augment < 0 or self.noise < 0:
            raise EdgepackError(f"--augment {self.augment} / --noise {self.noise} is negative", "pass 0 or more")
        if self.feature_names is not None and not Path(self.feature_names).is_file():
            raise EdgepackError(f"feature names file '{self.feature_names}' does not exist",
                                "pass a text file with one feature name per line")

    def to_json(self) -> dict:
        return {"kind": self.kind, **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}}


@dataclass(frozen=True)
class Condition:
    """feature ≤ threshold (`below`) or feature > threshold, threshold a float64 the text prints."""

    feature: int
    below: bool
    threshold: float

    @property
    def compared(self) -> np.float32:
        """The float32 the program compares with: float32 x ≤ threshold iff x ≤ this value."""
        return float32_at_most(self.threshold)


@dataclass(frozen=True)
class Rule:
    conditions: tuple[Condition, ...]
    label: int
    covered: int = 0  # training samples this rule decides (not covered by an earlier rule)
    correct: int = 0


@dataclass(frozen=True)
class RuleSet:
    """The ordered rules; the last has no condition (the default)."""

    rules: tuple[Rule, ...]
    n_classes: int

    @property
    def conditions(self) -> list[tuple[int, Condition]]:
        return [(index, condition) for index, rule in enumerate(self.rules) for condition in rule.conditions]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The fitted student's own predictions: the label of the first rule whose conditions all hold."""
        x = features.astype(np.float32)
        result = np.full(len(x), -1, np.int64)
        for rule in self.rules:
            fires = np.ones(len(x), bool)
            for condition in rule.conditions:
                column = x[:, condition.feature]
                fires &= (column <= condition.compared) if condition.below else ~(column <= condition.compared)
            result[(result < 0) & fires] = rule.label
        return result

    @property
    def params(self) -> int:
        return sum(2 * len(rule.conditions) + 1 for rule in self.rules)


def _paths(tree) -> list[tuple[Condition, ...]]:
    """Every node's path conditions, merged per feature into the tightest bounds."""
    structure = tree.tree_
    left, right = structure.children_left, structure.children_right
    found, stack = [], [(0, {})]
    while stack:
        node, bounds = stack.pop()
        if bounds:
            found.append(tuple(Condition(f, below, t) for (f, below), t in sorted(bounds.items())))
        if left[node] == -1:
            continue
        feature, threshold = int(structure.feature[node]), float(structure.threshold[node])
        low, high = dict(bounds), dict(bounds)
        high[(feature, True)] = min(threshold, bounds.get((feature, True), np.inf))
        low[(feature, False)] = max(threshold, bounds.get((feature, False), -np.inf))
        stack += [(left[node], high), (right[node], low)]
    return found


def _covers(conditions: tuple[Condition, ...], x: np.ndarray) -> np.ndarray:
    mask = np.ones(len(x), bool)
    for c in conditions:
        mask &= (x[:, c.feature] <= c.compared) if c.below else ~(x[:, c.feature] <= c.compared)
    return mask


def fit_rules(features: np.ndarray, classes: np.ndarray, n_classes: int, config: RuleSetStudentConfig) -> RuleSet:
    """Candidates from a shallow forest, then sequential covering to the rule budget, then rounding."""
    from sklearn.ensemble import RandomForestClassifier

    x = features.astype(np.float32)
    if len(np.unique(classes)) < 2:
        raise EdgepackError("the teacher predicts one class on all the training data",
                            "pass training data on which the teacher predicts several classes")
    forest = RandomForestClassifier(n_estimators=config.trees, max_depth=config.max_conditions, random_state=config.seed)
    forest.fit(x, classes)
    candidates = list(dict.fromkeys(path for tree in forest.estimators_ for path in _paths(tree)))
    cover = np.stack([_covers(path, x) for path in candidates])
    onehot = np.eye(n_classes, dtype=np.int64)[classes]
    remaining = np.ones(len(x), bool)
    rules = []
    while len(rules) < config.max_rules - 1 and remaining.any():
        live = cover & remaining
        counts = live.astype(np.int64) @ onehot  # candidates × classes
        covered = counts.sum(axis=1)
        right = counts.max(axis=1)
        score = np.where(covered >= config.min_support, right - WRONG_WEIGHT * (covered - right), -1)
        best = int(np.argmax(score))
        if score[best] <= 0:
            break
        label = int(np.argmax(counts[best]))
        rules.append(Rule(candidates[best], label, int(covered[best]), int(right[best])))
        remaining &= ~cover[best]
    rest = onehot[remaining].sum(axis=0) if remaining.any() else onehot.sum(axis=0)
    default = int(np.argmax(rest))
    rules.append(Rule((), default, int(remaining.sum()), int(rest[default]) if remaining.any() else 0))
    if len(rules) == 1:
        raise EdgepackError("no rule beats predicting one class for every sample",
                            "raise --max-conditions, or distill into --tree or --svm instead")
    return round_thresholds(RuleSet(tuple(rules), n_classes), x)


def _with_threshold(rules: RuleSet, at: tuple[int, int], value: float) -> RuleSet:
    rule_index, condition_index = at
    rule = rules.rules[rule_index]
    conditions = list(rule.conditions)
    conditions[condition_index] = Condition(conditions[condition_index].feature, conditions[condition_index].below, value)
    changed = list(rules.rules)
    changed[rule_index] = Rule(tuple(conditions), rule.label, rule.covered, rule.correct)
    return RuleSet(tuple(changed), rules.n_classes)


def round_thresholds(rules: RuleSet, x: np.ndarray) -> RuleSet:
    """Round each threshold to the fewest decimals (0..6) that keep every prediction on `x` unchanged."""
    reference = rules.predict(x)
    for rule_index, rule in enumerate(rules.rules):
        for condition_index, condition in enumerate(rule.conditions):
            for decimals in range(MAX_DECIMALS + 1):
                rounded = round(condition.threshold, decimals)
                trial = _with_threshold(rules, (rule_index, condition_index), rounded)
                if np.array_equal(trial.predict(x), reference):
                    rules = trial
                    break
            else:  # no short decimal works: the exact float32 value, printed in full
                rules = _with_threshold(rules, (rule_index, condition_index), float(condition.compared))
    return rules


def _number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def rules_listing(rules: RuleSet, names: list[str], header: list[str]) -> str:
    """rules.txt: one ordered if-then rule per line, the first rule that holds decides."""
    lines = [f"# {line}" for line in header]
    lines.append("# rules are tried in order; the first whose conditions all hold gives the class")
    for number, rule in enumerate(rules.rules, start=1):
        decided = f"{rule.covered} training sample{'s' if rule.covered != 1 else ''}, {rule.correct} as the teacher"
        if not rule.conditions:
            lines.append(f"rule {number}: otherwise class {rule.label}  ({decided})")
            continue
        condition = " and ".join(f"{names[c.feature]} {'<=' if c.below else '>'} {_number(c.threshold)}" for c in rule.conditions)
        lines.append(f"rule {number}: if {condition} then class {rule.label}  ({decided})")
    return "\n".join(lines) + "\n"


def rules_to_onnx(rules: RuleSet, n_features: int, spec, path: Path, doc: str = "", version: str | None = None) -> Path:
    """Write the decision list as an ONNX tensor program; its output is the one-hot class of the first rule that holds."""
    from onnx import TensorProto, helper

    conditions = rules.conditions
    count = len(rules.rules)
    selector = np.zeros((n_features, len(conditions)), np.float32)
    thresholds = np.zeros(len(conditions), np.float32)
    sign = np.ones(len(conditions), np.float32)
    offset = np.zeros(len(conditions), np.float32)
    member = np.zeros((len(conditions), count), np.float32)
    for column, (rule_index, condition) in enumerate(conditions):
        selector[condition.feature, column] = 1.0
        thresholds[column] = condition.compared
        if not condition.below:  # x > t is 1 − (x ≤ t)
            sign[column], offset[column] = -1.0, 1.0
        member[column, rule_index] = 1.0
    needed = np.array([len(rule.conditions) for rule in rules.rules], np.float32)
    earlier = np.triu(np.ones((count, count), np.float32), k=1)  # earlier[j, i] = 1 when j < i
    labels = np.zeros((count, rules.n_classes), np.float32)
    labels[np.arange(count), [rule.label for rule in rules.rules]] = 1.0
    constants = {"A": selector, "B": thresholds, "P": sign, "Q": offset, "R": member, "D": needed, "U": earlier,
                 "zero": np.zeros(1, np.float32), "E": labels}
    nodes = [
        helper.make_node("MatMul", [FEATURES, "A"], ["selected"]),
        helper.make_node("LessOrEqual", ["selected", "B"], ["at_most"]),
        helper.make_node("Cast", ["at_most"], ["at_most_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["at_most_f", "P"], ["signed"]),
        helper.make_node("Add", ["signed", "Q"], ["holds"]),  # 1 where the condition holds
        helper.make_node("MatMul", ["holds", "R"], ["met"]),
        helper.make_node("Equal", ["met", "D"], ["fires_b"]),
        helper.make_node("Cast", ["fires_b"], ["fires"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["fires", "U"], ["fired_before"]),
        helper.make_node("Equal", ["fired_before", "zero"], ["first_b"]),
        helper.make_node("Cast", ["first_b"], ["none_before"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["fires", "none_before"], ["first"]),
        helper.make_node("MatMul", ["first", "E"], [OUTPUT_NAME]),
    ]
    return write_program(nodes, constants, spec, OUTPUT_NAME, rules.n_classes, path, "rule_set", doc, version)
