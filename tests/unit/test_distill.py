"""Distillation without TVM builds: the loss, the tree's tensor program and rules, training, plans, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from edgepack.compression.distill import NetworkStudentConfig, TreeStudentConfig, plan_distill, run_distill
from edgepack.compression.distill.tree import fit_tree, flatten_samples, rule_listing, tree_matrices, tree_predict, tree_to_onnx
from edgepack.errors import EdgepackError
from edgepack.runtime.bundle_format import TensorSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "edgepack" / "examples"


def _onnx_run(path: Path, name: str, samples: np.ndarray, batch: int = 1) -> np.ndarray:
    from edgepack.measure.reference import onnxruntime_session

    session = onnxruntime_session(path)
    return np.concatenate([session.run(None, {name: samples[i:i + batch]})[0] for i in range(0, len(samples), batch)])


def _linear_teacher(path: Path, features: int = 64, classes: int = 10, seed: int = 0) -> Path:
    """A tiny ONNX classifier (x·W + b) written by hand: a teacher with no torch export involved."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((features, classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(np.zeros(classes, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def digits():
    from edgepack.examples.digits import digits_split

    return digits_split()


# -- the loss -------------------------------------------------------------------------------------

def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("alpha", [1.0, 0.7, 0.0])
def test_kd_loss_is_the_hinton_formula(alpha):
    import torch

    from edgepack.compression.distill import kd_loss

    rng = np.random.default_rng(1)
    student, teacher = rng.standard_normal((5, 4)), rng.standard_normal((5, 4)) * 3
    labels = np.array([0, 3, 1, 2, 2])
    temperature = 3.0
    p_t, p_s = _softmax(teacher / temperature), _softmax(student / temperature)
    kl = np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    ce = np.mean(-np.log(_softmax(student)[np.arange(5), labels]))
    expected = alpha * temperature ** 2 * kl + (1 - alpha) * ce
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), temperature, alpha)
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_alpha_defaults_and_unlabelled_data():
    config = NetworkStudentConfig("s.py:f")
    assert config.resolved_alpha(labelled=True) == 0.5
    assert config.resolved_alpha(labelled=False) == 1.0
    with pytest.raises(EdgepackError, match="has none"):
        NetworkStudentConfig("s.py:f", alpha=0.5).resolved_alpha(labelled=False)
    with pytest.raises(EdgepackError, match="outside 0..1"):
        NetworkStudentConfig("s.py:f", alpha=1.5).check()


# -- the tree as a tensor program ------------------------------------------------------------------

def test_tree_program_predicts_exactly_as_the_tree_on_digits(digits, tmp_path):
    from edgepack.frontends.preflight import load_onnx, op_report

    train_x, test_x, train_y, _ = digits
    tree = fit_tree(flatten_samples((train_x,)), train_y, TreeStudentConfig(max_depth=7))
    spec = TensorSpec("image", "float32", (1, 1, 8, 8))
    matrices = tree_matrices(tree, 64, 10)
    path = tree_to_onnx(matrices, spec, tmp_path / "tree.onnx")
    scores = _onnx_run(path, "image", test_x)
    features = flatten_samples((test_x,))
    np.testing.assert_array_equal(scores.argmax(axis=1), tree_predict(tree, features))
    np.testing.assert_allclose(scores, tree.predict_proba(features), atol=1e-6)
    report = op_report(load_onnx(path))
    assert report.unsupported == () and set(report.op_counts) == {"Flatten", "MatMul", "LessOrEqual", "Cast", "Equal"}
    assert matrices.paths.shape == (tree.tree_.node_count - tree.get_n_leaves(), tree.get_n_leaves())


def test_thresholds_between_adjacent_float32_values_split_exactly(tmp_path):
    """sklearn compares float32 features with a float64 midpoint; rounding it to float32 naively can flip a sample."""
    up = np.float32(np.inf)
    low = next(v for v in (np.float32(1000), np.nextafter(np.float32(1000), up))  # a midpoint float32 rounds up
               if float(np.float32((float(v) + float(np.nextafter(v, up))) / 2)) > (float(v) + float(np.nextafter(v, up))) / 2)
    high = np.nextafter(low, up)
    features = np.array([[low], [high]] * 4, np.float32)
    classes = np.array([0, 1] * 4)
    tree = fit_tree(features, classes, TreeStudentConfig(max_depth=1))
    threshold = float(tree.tree_.threshold[0])
    assert float(low) <= threshold < float(high) and float(np.float32(threshold)) > threshold  # the naive rounding is wrong
    path = tree_to_onnx(tree_matrices(tree, 1, 2), TensorSpec("x", "float32", (2, 1)), tmp_path / "edge.onnx")
    scores = _onnx_run(path, "x", features, batch=2)
    np.testing.assert_array_equal(scores.argmax(axis=1), tree_predict(tree, features))


def test_leaf_with_float32_tie_keeps_the_trees_class(tmp_path):
    from edgepack.compression.distill.tree import TreeMatrices

    tree = fit_tree(np.array([[0.0], [0.0], [1.0]], np.float32), np.array([0, 1, 1]), TreeStudentConfig(max_depth=1))
    tree.tree_.value[1, 0, :] = [0.5, 0.5 + 1e-12]  # distinct in float64, equal in float32
    matrices: TreeMatrices = tree_matrices(tree, 1, 2)
    left = matrices.leaves.index(1)
    assert int(np.argmax(matrices.leaf_values[left])) == 1


def _matches(rule: str, sample: np.ndarray, names: list[str]) -> bool:
    for part in rule.split(" and "):
        found = re.fullmatch(r"(\S+) < (\S+) <= (\S+)", part)
        if found:
            low, name, high = found.groups()
            value = sample[names.index(name)]
            if not (np.float32(low) < value <= np.float32(high)):
                return False
            continue
        name, op, threshold = part.split(" ")
        value = sample[names.index(name)]
        if (op == "<=" and not value <= np.float32(threshold)) or (op == ">" and not value > np.float32(threshold)):
            return False
    return True


def test_rule_listing_matches_each_sample_with_exactly_one_rule_of_the_trees_class(digits):
    from edgepack.compression.distill.program import feature_names

    train_x, test_x, train_y, _ = digits
    tree = fit_tree(flatten_samples((train_x,)), train_y, TreeStudentConfig(max_depth=5))
    spec = TensorSpec("image", "float32", (1, 1, 8, 8))
    text = rule_listing(tree, tree_matrices(tree, 64, 10), spec, ["header"])
    rules = [re.fullmatch(r"rule \d+: if (.+) then class (\d+)  \(.*\)", line).groups()
             for line in text.splitlines() if line.startswith("rule ")]
    assert len(rules) == tree.get_n_leaves()
    names = feature_names(spec)
    features = flatten_samples((test_x[:60],))
    for sample, predicted in zip(features, tree_predict(tree, features)):
        matching = [int(cls) for condition, cls in rules if _matches(condition, sample, names)]
        assert matching == [predicted]


# -- network training ------------------------------------------------------------------------------

def test_pure_distillation_keeps_the_best_epoch():
    import torch
    from torch import nn

    from edgepack.compression.distill.network import EpochReport, train_student

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 6)).astype(np.float32)
    teacher = (x @ rng.standard_normal((6, 3))).astype(np.float32)
    torch.manual_seed(0)
    student = nn.Linear(6, 3)
    scores = iter([0.5, 0.9, 0.7, 0.6])
    kept = {}

    def evaluate(module):  # fidelity only (no labels); the epoch scoring 0.9 must be the one kept
        score = next(scores)
        kept[score] = module.weight.detach().clone()
        return EpochReport(0, 0.0, None, score)

    states = []
    trained, history, best = train_student(student, (x,), teacher, None, NetworkStudentConfig("s.py:f", epochs=4, lr=1e-2),
                                           1.0, evaluate, progress=states.append)
    assert best == 2 and [h.fidelity for h in history] == [0.5, 0.9, 0.7, 0.6]
    assert torch.equal(trained.weight, kept[0.9])
    assert history[-1].loss < history[0].loss  # it learns the teacher
    assert states[-1].step == states[-1].steps == 4 * 4 and states[-1].last.epoch == 4


def test_run_distill_tree_from_an_onnx_teacher_without_labels(tmp_path):
    teacher = _linear_teacher(tmp_path / "linear.onnx", features=8, classes=3)
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "train.npz", x=rng.standard_normal((400, 8)).astype(np.float32))
    result = run_distill(plan_distill(str(teacher), TreeStudentConfig(max_depth=4), tmp_path / "train.npz", tmp_path / "out"))
    assert [p.name for p in result.files] == ["linear_tree.onnx", "linear_tree.rules.txt", "linear_tree.distill.json"]
    report = result.record.report
    assert report["labelled"] is False and report["measured_on"].startswith("training data")
    assert report["student"]["onnx_equals_student"]["train"] == {"samples": 400, "mismatches": 0}
    assert 0.5 < report["student"]["top1_agreement"] <= 1.0 and "accuracy" not in report["student"]
    assert report["teacher"]["params"] == 8 * 3 + 3
    assert result.rows[1]["fidelity"] == report["student"]["top1_agreement"]
    assert not list((tmp_path / "out").glob(".*"))  # the work directory is gone


def test_run_distill_network_from_a_torch_teacher(tmp_path):
    """A PyTorch teacher and student (factories), labelled data, an evaluation each epoch; .pt2 and .onnx written."""
    (tmp_path / "nets.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Teacher(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))\n"
        "        self.example_inputs = (torch.zeros(1, 8),)\n"
        "    def forward(self, features):\n        return self.net(features)\n"
        "def teacher():\n    torch.manual_seed(0)\n    return Teacher()\n"
        "def student():\n    return nn.Linear(8, 3)\n")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    np.savez(tmp_path / "train.npz", x=x[:200], labels=rng.integers(0, 3, 200))
    np.savez(tmp_path / "eval.npz", x=x[200:], labels=rng.integers(0, 3, 100))
    config = NetworkStudentConfig(f"{tmp_path / 'nets.py'}:student", epochs=3, lr=1e-2)
    result = run_distill(plan_distill(f"{tmp_path / 'nets.py'}:teacher", config, tmp_path / "train.npz", tmp_path / "out",
                                      eval_data=tmp_path / "eval.npz"))
    student = result.record.report["student"]
    assert result.record.report["teacher"]["params"] == 8 * 32 + 32 + 32 * 3 + 3
    assert student["params"] == 8 * 3 + 3 and student["alpha"] == 0.5 and student["epochs_run"] == 3
    assert student["selected_by"] == "accuracy on 20 training samples held out (--val-fraction 0.1)" and 1 <= student["best_epoch"] <= 3
    assert student["trained_on"] == 180
    assert student["export"]["passed"] is True and student["samples"] == 100
    assert (tmp_path / "out" / "teacher_student.pt2").is_file()
    onnx_student = tmp_path / "out" / "teacher_student.onnx"
    from edgepack.frontends.preflight import load_onnx

    assert [value.name for value in load_onnx(onnx_student).graph.input] == ["features"]  # the teacher's input name


# -- plans and errors ------------------------------------------------------------------------------

def test_plan_refuses_bad_input_before_work(tmp_path):
    teacher = _linear_teacher(tmp_path / "t.onnx")
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 64), np.float32))
    tree = TreeStudentConfig()
    with pytest.raises(EdgepackError, match="training data .* does not exist"):
        plan_distill(str(teacher), tree, tmp_path / "missing.npz", tmp_path)
    with pytest.raises(EdgepackError, match="--max-drop needs --eval"):
        plan_distill(str(teacher), tree, tmp_path / "train.npz", tmp_path, max_drop=0.02)
    with pytest.raises(EdgepackError, match="--max-depth 0 is below 1"):
        plan_distill(str(teacher), TreeStudentConfig(max_depth=0), tmp_path / "train.npz", tmp_path)
    with pytest.raises(EdgepackError, match="unknown target"):
        plan_distill(str(teacher), tree, tmp_path / "train.npz", tmp_path, targets=("x86-64",))
    with pytest.raises(EdgepackError, match="is not file.py:factory"):
        plan_distill(str(teacher), NetworkStudentConfig("student.onnx"), tmp_path / "train.npz", tmp_path)
    (tmp_path / "t_tree.onnx").write_bytes(b"")
    with pytest.raises(EdgepackError, match="already exists"):
        plan_distill(str(teacher), tree, tmp_path / "train.npz", tmp_path)
    assert plan_distill(str(teacher), tree, tmp_path / "train.npz", tmp_path, force=True).name == "t_tree"


def test_data_that_does_not_fit_the_teacher_is_one_error(tmp_path):
    teacher = _linear_teacher(tmp_path / "t.onnx")
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 10), np.float32))
    with pytest.raises(EdgepackError, match="samples of shape"):
        run_distill(plan_distill(str(teacher), TreeStudentConfig(), tmp_path / "train.npz", tmp_path / "out"))


def test_build_refuses_extra_files_outside_the_bundle_or_over_its_files(tmp_path):
    from edgepack.build import _check_extra_files

    (tmp_path / "rules.txt").write_text("rule\n")
    assert _check_extra_files((("rules.txt", tmp_path / "rules.txt"),)) == (("rules.txt", tmp_path / "rules.txt"),)
    for rel in ("../rules.txt", "/tmp/rules.txt", "runtime/rules.txt", "manifest.json"):
        with pytest.raises(EdgepackError, match="outside the bundle or over a file"):
            _check_extra_files(((rel, tmp_path / "rules.txt"),))
    with pytest.raises(EdgepackError, match="does not exist"):
        _check_extra_files((("notes.txt", tmp_path / "missing.txt"),))


def test_cli_needs_exactly_one_student_kind(tmp_path):
    from typer.testing import CliRunner

    from edgepack.cli.app import app

    teacher = _linear_teacher(tmp_path / "t.onnx")
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 64), np.float32))
    runner = CliRunner()
    for extra in ([], ["--tree", "--student", f"{EXAMPLES / 'students.py'}:digits_student"], ["--svm", "--rules"]):
        result = runner.invoke(app, ["distill", str(teacher), "--data", str(tmp_path / "train.npz"), *extra])
        assert isinstance(result.exception, EdgepackError) and "--tree, --svm, --rules" in result.exception.fix
    result = runner.invoke(app, ["distill", str(teacher), "--data", str(tmp_path / "train.npz"), "--tree", "--dry-run",
                                 "-o", str(tmp_path / "out"), "--target", "x86_64"])
    assert result.exit_code == 0, result.output
    assert "bundles: t_tree-0.1.0-x86_64" in result.output


def test_augmented_tree_is_fitted_on_teacher_labelled_noisy_copies(tmp_path):
    teacher = _linear_teacher(tmp_path / "linear.onnx", features=8, classes=3)
    np.savez(tmp_path / "train.npz", x=np.random.default_rng(4).standard_normal((300, 8)).astype(np.float32))
    result = run_distill(plan_distill(str(teacher), TreeStudentConfig(max_depth=3, augment=500), tmp_path / "train.npz",
                                      tmp_path / "out"))
    student = result.record.report["student"]
    assert student["fitted_on"] == 800 and result.record.config["student"]["augment"] == 500
    assert student["onnx_equals_student"]["train"]["mismatches"] == 0


def test_a_student_below_max_drop_is_refused_before_anything_is_written(tmp_path):
    from edgepack.errors import VerificationError
    from edgepack.measure.evaluation import onnx_predictor

    teacher = _linear_teacher(tmp_path / "linear.onnx", features=8, classes=3)
    x = np.random.default_rng(5).standard_normal((300, 8)).astype(np.float32)
    run = onnx_predictor(teacher)
    labels = np.array([int(np.argmax(run([row[None]])[0])) for row in x])  # the teacher is 100% right
    np.savez(tmp_path / "train.npz", x=x[:200], labels=labels[:200])
    np.savez(tmp_path / "eval.npz", x=x[200:], labels=labels[200:])
    plan = plan_distill(str(teacher), TreeStudentConfig(max_depth=1), tmp_path / "train.npz", tmp_path / "out",
                        eval_data=tmp_path / "eval.npz", max_drop=0.0)
    with pytest.raises(VerificationError, match=r"the student loses too much: accuracy 1.0000 → 0\.\d+"):
        run_distill(plan)
    assert list((tmp_path / "out").iterdir()) == []


def test_network_best_epoch_is_chosen_on_val_data_never_on_the_reported_eval_split(tmp_path):
    """Epoch scores come from --val (37 samples: every accuracy is k/37), the reported quality from --eval (100)."""
    (tmp_path / "nets.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def teacher():\n    torch.manual_seed(0)\n    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))\n"
        "    net.example_inputs = (torch.zeros(1, 8),)\n    return net\n"
        "def student():\n    return nn.Linear(8, 3)\n")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((337, 8)).astype(np.float32)
    np.savez(tmp_path / "train.npz", x=x[:200], labels=rng.integers(0, 3, 200))
    np.savez(tmp_path / "eval.npz", x=x[200:300], labels=rng.integers(0, 3, 100))
    np.savez(tmp_path / "val.npz", x=x[300:], labels=rng.integers(0, 3, 37))
    config = NetworkStudentConfig(f"{tmp_path / 'nets.py'}:student", epochs=4)
    result = run_distill(plan_distill(f"{tmp_path / 'nets.py'}:teacher", config, tmp_path / "train.npz", tmp_path / "out",
                                      eval_data=tmp_path / "eval.npz", val_data=tmp_path / "val.npz"))
    student = result.record.report["student"]
    assert student["selected_by"].startswith("accuracy on --val") and student["trained_on"] == 200
    assert all(abs(h["accuracy"] * 37 - round(h["accuracy"] * 37)) < 1e-9 for h in student["history"])
    assert student["samples"] == 100
    with pytest.raises(EdgepackError, match="fitted students have no epochs"):
        plan_distill(f"{tmp_path / 'nets.py'}:teacher", TreeStudentConfig(), tmp_path / "train.npz", tmp_path / "o2",
                     val_data=tmp_path / "val.npz")
