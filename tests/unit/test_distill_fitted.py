"""SVM and rule-set students without TVM builds: their tensor programs against the fitted students."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepack.compression.distill import RuleSetStudentConfig, SvmStudentConfig, plan_distill, run_distill
from edgepack.compression.distill.rules import fit_rules, rules_listing, rules_to_onnx
from edgepack.compression.distill.svm import fit_svm, svm_to_onnx
from edgepack.errors import EdgepackError
from edgepack.runtime.bundle_format import TensorSpec

SPEC = TensorSpec("image", "float32", (1, 1, 8, 8))


def _onnx_run(path: Path, samples: np.ndarray) -> np.ndarray:
    from edgepack.measure.reference import onnxruntime_session

    session = onnxruntime_session(path)
    return np.concatenate([session.run(None, {"image": samples[i:i + 1]})[0] for i in range(len(samples))])


@pytest.fixture(scope="module")
def digits():
    from edgepack.examples.digits import digits_split

    train_x, test_x, train_y, test_y = digits_split()
    return train_x, test_x, train_y, test_y


@pytest.mark.parametrize("kernel,fit_to", [("linear", "labels"), ("rbf", "labels"), ("rbf", "scores")])
def test_svm_program_reproduces_decision_function_and_class(digits, tmp_path, kernel, fit_to):
    train_x, test_x, train_y, test_y = digits
    scores = np.eye(10, dtype=np.float32)[train_y] * 4 - 2
    svm = fit_svm(train_x.reshape(len(train_x), -1), train_y, scores, SvmStudentConfig(kernel, fit_to, components=60))
    features = test_x.reshape(len(test_x), -1)
    program = _onnx_run(svm_to_onnx(svm, SPEC, tmp_path / "svm.onnx"), test_x)
    np.testing.assert_array_equal(program.argmax(axis=1), svm.predict(features))
    np.testing.assert_allclose(program, svm.decision(features), rtol=1e-5, atol=1e-5)
    assert np.mean(svm.predict(features) == test_y) > 0.7
    if kernel == "rbf":
        assert svm.nystroem.components_.shape == (60, 64)
        assert svm.params == 60 * 64 + 60 * 10 + 10 + 2 * 64  # bounded by the components, not the support vectors


def test_binary_svm_keeps_sklearn_sign_rule_and_leaves_other_classes_out(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 1, 8, 8)).astype(np.float32)
    classes = np.where(x[:, 0, 0, 0] + x[:, 0, 1, 1] > 0, 7, 2)  # two of ten teacher classes
    svm = fit_svm(x.reshape(300, -1), classes, np.zeros((300, 10), np.float32), SvmStudentConfig())
    program = _onnx_run(svm_to_onnx(svm, SPEC, tmp_path / "binary.onnx"), x)
    np.testing.assert_array_equal(program.argmax(axis=1), svm.model.predict(svm._mapped(x.reshape(300, -1))))
    assert set(program.argmax(axis=1)) == {2, 7}
    np.testing.assert_allclose(program[:, 7], svm.model.decision_function(svm._mapped(x.reshape(300, -1))), rtol=1e-5, atol=1e-5)


def test_rule_set_program_equals_the_rules_within_budget_and_rounding_changes_nothing(digits, tmp_path):
    train_x, test_x, train_y, _ = digits
    features = train_x.reshape(len(train_x), -1)
    rules = fit_rules(features, train_y, 10, RuleSetStudentConfig(max_rules=12, max_conditions=2))
    assert len(rules.rules) <= 12 and all(len(rule.conditions) <= 2 for rule in rules.rules) and not rules.rules[-1].conditions
    program = _onnx_run(rules_to_onnx(rules, 64, SPEC, tmp_path / "rules.onnx"), test_x)
    np.testing.assert_array_equal(program.argmax(axis=1), rules.predict(test_x.reshape(len(test_x), -1)))
    assert set(np.unique(program)) <= {0.0, 1.0} and (program.sum(axis=1) == 1).all()
    thresholds = [c.threshold for _, c in rules.conditions]
    assert all(len(repr(t).split(".")[-1]) <= 6 for t in thresholds)
    assert sum(len(repr(t)) for t in thresholds) < 6 * len(thresholds)  # most rounded to a few digits


def test_rounding_picks_the_fewest_decimals_that_keep_every_prediction():
    from edgepack.compression.distill.rules import Condition, Rule, RuleSet, round_thresholds

    x = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)
    exact = RuleSet((Rule((Condition(0, True, 2.1234567),), 1), Rule((), 0)), 2)
    assert round_thresholds(exact, x).rules[0].conditions[0].threshold == 2.0
    x = np.array([[2.0], [2.2], [2.3]], np.float32)  # 2 would move 2.2, 2.3 would move float32 2.3 across
    exact = RuleSet((Rule((Condition(0, True, 2.2634),), 1), Rule((), 0)), 2)
    rounded = round_thresholds(exact, x)
    assert rounded.rules[0].conditions[0].threshold == 2.26
    np.testing.assert_array_equal(rounded.predict(x), exact.predict(x))


def test_rules_listing_reads_like_the_program_with_feature_names(digits):
    train_x, _, train_y, _ = digits
    rules = fit_rules(train_x.reshape(len(train_x), -1), train_y, 10, RuleSetStudentConfig(max_rules=6))
    names = [f"pixel_r{r}c{c}" for r in range(8) for c in range(8)]
    text = rules_listing(rules, names, ["header line"])
    lines = [line for line in text.splitlines() if line.startswith("rule ")]
    assert len(lines) == len(rules.rules) and lines[-1].startswith(f"rule {len(lines)}: otherwise class ")
    first = rules.rules[0]
    condition = first.conditions[0]
    assert f"{names[condition.feature]} {'<=' if condition.below else '>'}" in lines[0]
    assert lines[0].split(" then class ")[1].split()[0] == str(first.label)


def _linear_onnx(path: Path, features: int = 16, classes: int = 3) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(1).standard_normal((features, classes)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["logits"])], "linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, features])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
                              initializer=[numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_run_distill_svm_and_rules_write_their_files(tmp_path):
    teacher = _linear_onnx(tmp_path / "t.onnx")
    x = np.random.default_rng(2).standard_normal((400, 16)).astype(np.float32)
    np.savez(tmp_path / "train.npz", x=x)
    (tmp_path / "names.txt").write_text("".join(f"f{i}\n" for i in range(16)))
    svm = run_distill(plan_distill(str(teacher), SvmStudentConfig(kernel="rbf", components=20), tmp_path / "train.npz", tmp_path / "out"))
    report = svm.record.report["student"]
    assert report["components"] == 20 and report["onnx_equals_student"]["train"]["mismatches"] == 0
    assert [p.name for p in svm.files] == ["t_svm.onnx", "t_svm.distill.json"]
    rules = run_distill(plan_distill(str(teacher), RuleSetStudentConfig(max_rules=8, feature_names=tmp_path / "names.txt"),
                                     tmp_path / "train.npz", tmp_path / "out"))
    text = (tmp_path / "out" / "t_rules.rules.txt").read_text()
    assert text.count("\nrule ") == rules.record.report["student"]["rules"] <= 8 and " f" in text and "x[" not in text
    (tmp_path / "bad.txt").write_text("a\nb\n")
    with pytest.raises(EdgepackError, match="names 2 features"):
        run_distill(plan_distill(str(teacher), RuleSetStudentConfig(feature_names=tmp_path / "bad.txt"), tmp_path / "train.npz",
                                 tmp_path / "out", force=True))
    with pytest.raises(EdgepackError, match="unknown SVM kernel"):
        plan_distill(str(teacher), SvmStudentConfig(kernel="poly"), tmp_path / "train.npz", tmp_path / "out")


def test_a_teacher_input_named_like_a_program_tensor_works_or_is_refused(tmp_path):
    """'features' (a common input name) no longer collides; a name the program uses is one clear error."""
    from edgepack.compression.distill.program import FEATURES

    rng = np.random.default_rng(5)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    svm = fit_svm(x, (x[:, 0] > 0).astype(np.int64), np.zeros((60, 2), np.float32), SvmStudentConfig())
    from edgepack.measure.reference import onnxruntime_session

    path = svm_to_onnx(svm, TensorSpec("features", "float32", (1, 4)), tmp_path / "f.onnx")
    out = np.concatenate([onnxruntime_session(path).run(None, {"features": x[i:i + 1]})[0] for i in range(60)])
    np.testing.assert_array_equal(out.argmax(axis=1), svm.predict(x))
    for name in (FEATURES, "W", "xw"):
        with pytest.raises(EdgepackError, match=f"input name '{name}'"):
            svm_to_onnx(svm, TensorSpec(name, "float32", (1, 4)), tmp_path / "g.onnx")
