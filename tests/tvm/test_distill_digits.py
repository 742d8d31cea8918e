"""Distillation on scikit-learn's digits, through real TVM builds.

The teacher is the digits CNN (edgepack/examples/digits.py), exported to ONNX once and run in ONNX
Runtime. A network student with under a quarter of its parameters must stay within 2 points of
its accuracy; a depth-limited tree's compiled bundle must predict exactly what the tree predicts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgepack.compression.distill import NetworkStudentConfig, RuleSetStudentConfig, SvmStudentConfig, TreeStudentConfig, distill

pytestmark = pytest.mark.tvm

EXAMPLES = Path(__file__).resolve().parents[2] / "edgepack" / "examples"
CROSS = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                           reason="needs g++-aarch64-linux-gnu and qemu-user (scripts/setup.sh installs them)")
TREE = TreeStudentConfig(max_depth=8)
SVM = SvmStudentConfig(kernel="rbf", components=60)
RULES = RuleSetStudentConfig(max_rules=16, max_conditions=3)


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory) -> dict[str, Path]:
    """The digits CNN teacher as ONNX, and the train/test splits as .npz files."""
    from edgepack.examples.digits import digits_cnn, digits_split
    from edgepack.frontends.export import ExportConfig, load_torch_model, export_to_onnx
    from edgepack.frontends.sources import parse_source

    directory = tmp_path_factory.mktemp("digits-distill")
    train_x, test_x, train_y, test_y = digits_split()
    np.savez(directory / "train.npz", image=train_x, labels=train_y)
    np.savez(directory / "test.npz", image=test_x, labels=test_y)
    teacher = load_torch_model(parse_source(f"{EXAMPLES / 'digits.py'}:digits_cnn"), {})
    export_to_onnx(teacher, directory / "digits_cnn.onnx", ExportConfig())
    return {"dir": directory, "teacher": directory / "digits_cnn.onnx", "train": directory / "train.npz",
            "test": directory / "test.npz", "torch_params": sum(p.numel() for p in digits_cnn().parameters())}


@pytest.fixture(scope="module")
def network(digits_files):
    config = NetworkStudentConfig(f"{EXAMPLES / 'students.py'}:digits_student", epochs=30)
    return distill(str(digits_files["teacher"]), config, digits_files["train"], digits_files["dir"] / "net",
                   eval_data=digits_files["test"], targets=("x86_64",), max_drop=0.02, latency_runs=20)


@pytest.fixture(scope="module")
def tree(digits_files):
    return distill(str(digits_files["teacher"]), TREE, digits_files["train"], digits_files["dir"] / "tree",
                   eval_data=digits_files["test"], targets=("x86_64",), latency_runs=20)


@pytest.fixture(scope="module")
def teacher_classes(digits_files):
    """The teacher's training-set logits and classes, as the fitted students saw them."""
    from edgepack.examples.digits import digits_split
    from edgepack.measure.evaluation import EvalData, onnx_predictor, predict
    from edgepack.runtime.bundle_format import TensorSpec

    train_x = digits_split()[0]
    logits = predict(onnx_predictor(digits_files["teacher"]), (TensorSpec("image", "float32", (1, 1, 8, 8)),),
                     EvalData((train_x,), None, "train"))[0].astype(np.float32)
    return train_x.reshape(len(train_x), -1), logits


@pytest.fixture(scope="module")
def svm(digits_files):
    return distill(str(digits_files["teacher"]), SVM, digits_files["train"], digits_files["dir"] / "svm",
                   eval_data=digits_files["test"], targets=("x86_64",), latency_runs=5)


@pytest.fixture(scope="module")
def rules(digits_files):
    names = digits_files["dir"] / "names.txt"
    names.write_text("".join(f"pixel_r{r}c{c}\n" for r in range(8) for c in range(8)))
    return distill(str(digits_files["teacher"]), RuleSetStudentConfig(16, 3, feature_names=names), digits_files["train"],
                   digits_files["dir"] / "rules", eval_data=digits_files["test"], targets=("x86_64",), latency_runs=5)


def _bundle_outputs(bundle, samples: np.ndarray) -> np.ndarray:
    from edgepack.runtime.loader import load

    loaded = load(bundle.path)
    return np.concatenate([loaded.run([sample[None]])[0] for sample in samples])


def test_svm_bundle_reproduces_the_fitted_svm_on_every_test_sample(svm, teacher_classes):
    from edgepack.compression.distill.svm import fit_svm
    from edgepack.examples.digits import digits_split

    features, logits = teacher_classes
    own = fit_svm(features, logits.argmax(axis=1), logits, SVM)  # the same fit, refitted here
    test_x = digits_split()[1]
    (bundle,) = svm.bundles
    scores = _bundle_outputs(bundle, test_x)
    test_features = test_x.reshape(len(test_x), -1)
    np.testing.assert_array_equal(scores.argmax(axis=1), own.predict(test_features))
    np.testing.assert_allclose(scores, own.decision(test_features), rtol=1e-5, atol=1e-5)
    report = svm.record.report["student"]
    assert report["components"] == 60 and report["params"] == own.params and report["exps"] == 60
    assert bundle.manifest["verification"]["passed"] and bundle.manifest["quality"]["after"]["top1_agreement"] > 0.9


def test_rule_set_bundle_predicts_as_its_rules_and_ships_them(rules, teacher_classes):
    from edgepack.compression.distill.rules import fit_rules
    from edgepack.examples.digits import digits_split

    features, logits = teacher_classes
    own = fit_rules(features, logits.argmax(axis=1), 10, RULES)
    test_x = digits_split()[1]
    (bundle,) = rules.bundles
    scores = _bundle_outputs(bundle, test_x)
    np.testing.assert_array_equal(scores.argmax(axis=1), own.predict(test_x.reshape(len(test_x), -1)))
    text = (bundle.path / "rules.txt").read_text()
    assert text.count("\nrule ") == len(own.rules) <= 16 and "pixel_r" in text
    assert bundle.manifest["files"]["rules.txt"]["size"] == len(text.encode())
    assert bundle.manifest["verification"]["passed"]


def test_network_student_has_a_quarter_of_the_parameters_within_two_points(network, digits_files):
    report = network.record.report
    teacher, student = report["teacher"], report["student"]
    assert 4 * student["params"] <= min(teacher["params"], digits_files["torch_params"])
    assert teacher["accuracy"] > 0.97
    assert student["accuracy"] >= teacher["accuracy"] - 0.02
    assert student["history"][student["best_epoch"] - 1]["accuracy"] == max(h["accuracy"] for h in student["history"])


def test_network_bundle_records_distill_and_its_quality_against_the_teacher(network):
    (bundle,) = network.bundles
    manifest = bundle.manifest
    assert bundle.path.name == "digits_cnn_student-0.1.0-x86_64"
    assert manifest["provenance"]["stages"][0] == network.record.to_json()
    assert manifest["provenance"]["source"]["kind"] == "onnx"
    verification = manifest["verification"]
    assert verification["passed"] and verification["python_loader"]["passed"] and verification["native_loader"]["passed"]
    quality = manifest["quality"]
    assert quality["baseline"].endswith("digits_cnn.onnx in ONNX Runtime") and quality["passed"] is True
    assert quality["before"]["accuracy"] == network.record.report["teacher"]["accuracy"]
    assert quality["after"]["accuracy"] >= quality["before"]["accuracy"] - 0.02
    assert quality["after"]["top1_agreement"] == pytest.approx(network.record.report["student"]["top1_agreement"], abs=0.005)
    assert quality["latency"]["median_ms"] > 0
    row = network.rows[-1]
    assert row["target"] == "x86_64 bundle" and row["latency_ms"] == quality["latency"]["median_ms"] and row["verified"]


def test_tree_bundle_predicts_exactly_as_the_tree_on_the_test_split(tree, digits_files):
    from edgepack.compression.distill.tree import fit_tree, flatten_samples, tree_predict
    from edgepack.measure.evaluation import EvalData, onnx_predictor, predict, top1
    from edgepack.examples.digits import digits_split
    from edgepack.runtime.bundle_format import TensorSpec
    from edgepack.runtime.loader import load

    train_x, test_x, _, _ = digits_split()
    image = (TensorSpec("image", "float32", (1, 1, 8, 8)),)
    teacher_train = predict(onnx_predictor(digits_files["teacher"]), image, EvalData((train_x,), None, "train"))[0]
    own = fit_tree(flatten_samples((train_x,)), top1(teacher_train), TREE)  # the same fit, refitted here
    assert own.get_n_leaves() == tree.record.report["student"]["leaves"]

    (bundle,) = tree.bundles
    loaded = load(bundle.path)
    scores = np.concatenate([loaded.run([sample[None]])[0] for sample in test_x])
    np.testing.assert_array_equal(scores.argmax(axis=1), tree_predict(own, flatten_samples((test_x,))))
    np.testing.assert_allclose(scores, own.predict_proba(flatten_samples((test_x,))), atol=1e-6)

    quality = bundle.manifest["quality"]
    fidelity = tree.record.report["student"]["top1_agreement"]
    assert quality["after"]["top1_agreement"] == fidelity and 0.5 < fidelity < 1.0  # reported, not assumed
    assert tree.record.report["student"]["depth"] <= 8


def test_tree_bundle_ships_its_rules_under_the_manifest_digests(tree, copy_bundle):
    from edgepack.errors import IntegrityError
    from edgepack.runtime.bundle_format import check_files, read_manifest

    (bundle,) = tree.bundles
    rules = (bundle.path / "rules.txt").read_text()
    assert rules.count("\nrule ") == tree.record.report["student"]["leaves"]
    assert bundle.manifest["files"]["rules.txt"]["size"] == len(rules.encode())
    copy = copy_bundle(bundle.path)
    (copy / "rules.txt").write_text(rules.replace("then class", "then class 1 or", 1))
    with pytest.raises(IntegrityError):
        check_files(copy, read_manifest(copy))


@pytest.mark.cross
@CROSS
def test_tree_svm_rules_and_network_bundles_for_arm64_verify_under_qemu(tree, network, digits_files):
    from edgepack.build import build

    arm_tree = distill(str(digits_files["teacher"]), TREE, digits_files["train"], digits_files["dir"] / "tree",
                       targets=("arm64",), force=True)
    arm_net = build(str(network.plan.model_path), "arm64", digits_files["dir"] / "net-arm").bundle  # the student goes on
    arm_svm = distill(str(digits_files["teacher"]), SVM, digits_files["train"], digits_files["dir"] / "svm-arm", targets=("arm64",))
    arm_rules = distill(str(digits_files["teacher"]), RULES, digits_files["train"], digits_files["dir"] / "rules-arm", targets=("arm64",))
    assert "rules.txt" in arm_rules.bundles[0].manifest["files"]
    for bundle in (arm_tree.bundles[0], arm_net, arm_svm.bundles[0], arm_rules.bundles[0]):
        verification = json.loads((bundle.path / "manifest.json").read_text())["verification"]
        assert verification["passed"] is True
        assert verification["native_loader"]["emulator"] == "qemu-aarch64" and verification["native_loader"]["passed"]
    assert "rules.txt" in arm_tree.bundles[0].manifest["files"]
    assert arm_tree.bundles[0].manifest["provenance"]["stages"][0]["stage"] == "distill"
