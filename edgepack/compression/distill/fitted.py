"""Fitted students (tree, SVM, rule set): fit on the teacher's outputs, write the tensor program, check it.

One path for every student scikit-learn fits: flatten the one input, optionally add noisy copies
the teacher labels (`augment`), fit, write the ONNX program (and a readable `rules.txt` where the
student has rules), then run the program in ONNX Runtime on the training and held data and refuse
it unless it predicts exactly the fitted student's class on every sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.compression.distill.rules import RuleSetStudentConfig
from edgepack.compression.distill.svm import SvmStudentConfig
from edgepack.compression.distill.tree import TreeStudentConfig, augmented, flatten_samples
from edgepack.errors import InternalError
from edgepack.measure.evaluation import EvalData, onnx_predictor, predict, top1

FittedConfig = TreeStudentConfig | SvmStudentConfig | RuleSetStudentConfig
SCORE_TOLERANCE = 1e-4  # SVM: program vs sklearn decision function, relative to the largest score


def _fit_tree(config, features, classes, scores, spec, n_classes, header, work, version):
    from edgepack.compression.distill.tree import fit_tree, rule_listing, tree_matrices, tree_predict, tree_to_onnx

    tree = fit_tree(features, classes, config)
    matrices = tree_matrices(tree, features.shape[1], n_classes)
    header = [f"decision tree {header[0]}: depth {tree.get_depth()}, {tree.get_n_leaves()} rules, {n_classes} classes",
              *header[1:], "output probabilities: class probabilities of the matching rule"]
    onnx_path = tree_to_onnx(matrices, spec, work / "student.onnx", doc="\n".join(header), version=version)
    report = {"params": matrices.elements, "depth": int(tree.get_depth()), "leaves": int(tree.get_n_leaves()),
              "decision_nodes": len(matrices.thresholds),
              "formulation": "GEMM: (x·A ≤ B)·C = D selects the leaf, leaf·E the class probabilities"}
    return (lambda x: tree_predict(tree, x)), None, onnx_path, rule_listing(tree, matrices, spec, header), report


def _fit_svm(config, features, classes, scores, spec, n_classes, header, work, version):
    from edgepack.compression.distill.svm import fit_svm, svm_cost, svm_to_onnx

    svm = fit_svm(features, classes, scores, config)
    kernel = "linear" if svm.nystroem is None else f"RBF through {svm.nystroem.components_.shape[0]} Nyström components"
    header = [f"{kernel} SVM {header[0]}, fitted to the teacher's {config.fit_to}", *header[1:]]
    onnx_path = svm_to_onnx(svm, spec, work / "student.onnx", doc="\n".join(header), version=version)
    report = {"params": svm.params, "kernel": config.kernel, "fit_to": config.fit_to, **svm_cost(svm),
              "formulation": "x·W + b" if svm.nystroem is None else "exp(−γ|z − c|²)·(N·W) + b, z standardised"}
    return svm.predict, svm.decision, onnx_path, None, report


def _fit_rules(config, features, classes, scores, spec, n_classes, header, work, version):
    from edgepack.compression.distill.program import read_feature_names
    from edgepack.compression.distill.rules import fit_rules, rules_listing, rules_to_onnx

    names = read_feature_names(config.feature_names, spec)
    rules = fit_rules(features, classes, n_classes, config)
    conditions = len(rules.conditions)
    header = [f"rule set {header[0]}: {len(rules.rules)} ordered rules, {conditions} conditions, {n_classes} classes", *header[1:]]
    onnx_path = rules_to_onnx(rules, features.shape[1], spec, work / "student.onnx", doc="\n".join(header), version=version)
    report = {"params": rules.params, "rules": len(rules.rules), "conditions": conditions,
              "formulation": "first rule whose conditions hold: (x·A ≤ B) counted per rule, earlier rules masked"}
    return rules.predict, None, onnx_path, rules_listing(rules, names, header), report


FITTERS = {TreeStudentConfig: _fit_tree, SvmStudentConfig: _fit_svm, RuleSetStudentConfig: _fit_rules}


def fit_student(config: FittedConfig, teacher, train: EvalData, train_logits: np.ndarray, held: EvalData, work: Path,
                n_classes: int, teacher_label: str, version: str | None = None) -> tuple[dict, Path, str | None]:
    """Fit `config` to the teacher; returns (report, ONNX program path, rules text or None)."""
    features, classes, scores = flatten_samples(train.inputs), top1(train_logits), train_logits
    if config.augment:  # more of the teacher's decisions near the data than the training set alone shows
        extra = (augmented(flatten_samples(train.inputs[:1]), config).reshape((config.augment, *train.inputs[0].shape[1:])),)
        extra_logits = teacher.logits(EvalData(extra, None, "augmented"))
        features = np.concatenate([features, flatten_samples(extra)])
        classes, scores = np.concatenate([classes, top1(extra_logits)]), np.concatenate([scores, extra_logits])
    spec = teacher.inputs[0]
    header = [f"distilled from {teacher_label}",
              f"input {spec.name}: {spec.dtype} {'x'.join(map(str, spec.shape))}"]
    own_predict, own_scores, onnx_path, listing, report = FITTERS[type(config)](
        config, features, classes, scores, spec, n_classes, header, work, version)
    checked = {}  # the tensor program must predict exactly what the fitted student predicts
    for label, data in (("train", train), ("eval", held)):
        x = flatten_samples(data.inputs)
        program = predict(onnx_predictor(onnx_path), teacher.inputs, data)[0]
        mismatches = int(np.sum(own_predict(x) != top1(program)))
        if mismatches:
            raise InternalError(f"the {config.kind} student's ONNX program disagrees with it on {mismatches} {label} samples")
        checked[label] = {"samples": len(data), "mismatches": mismatches}
        if own_scores is not None:
            reference = own_scores(x)
            shown = reference > -1e29  # classes the student has
            error = float(np.max(np.abs(program[shown] - reference[shown])) / max(1.0, np.max(np.abs(reference[shown]))))
            if error > SCORE_TOLERANCE:
                raise InternalError(f"the {config.kind} program's scores differ from sklearn's by {error:.2e} on {label}")
            checked[label]["max_relative_score_error"] = error
    report.update(fitted_on=len(features), onnx_equals_student=checked)
    return report, onnx_path, listing
