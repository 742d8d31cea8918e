"""`edgepack distill` as a user runs it: one-line errors and exit codes from a real subprocess."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.cli


def test_distill_errors_are_one_line_with_exit_1(edgepack_cli, tmp_path):
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 64), np.float32))
    (tmp_path / "t.onnx").write_bytes(b"not onnx")
    cases = [
        (["distill", "t.onnx", "--data", "train.npz"],
         "error: say which one student to distill into; pass one of --student file.py:factory, --tree, --svm, --rules"),
        (["distill", "t.onnx", "--data", "missing.npz", "--tree"],
         "error: training data 'missing.npz' does not exist; pass an .npz with one array per input (or 'x'), "
         "samples on axis 0, optional 'labels'"),
        (["distill", "t.onnx", "--data", "train.npz", "--tree", "-o", "out"],
         "error: 't.onnx' is not a readable ONNX model (DecodeError); export the model to ONNX again; "
         "the file may be truncated or of another format"),
    ]
    for args, line in cases:
        result = edgepack_cli(*args, cwd=tmp_path)
        assert (result.returncode, result.stderr.strip()) == (1, line), result.stderr
    assert not (tmp_path / "out" / "t_tree.onnx").exists()


def test_distill_svm_and_rules_options_reach_the_plan(edgepack_cli, tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              initializer=[numpy_helper.from_array(np.ones((4, 3), np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "t.onnx"))
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 4), np.float32))
    svm = edgepack_cli("distill", "t.onnx", "--data", "train.npz", "--svm", "--kernel", "rbf", "--components", "7", "--dry-run", cwd=tmp_path)
    assert svm.returncode == 0 and "kernel='rbf'" in svm.stdout and "components=7" in svm.stdout and "t_svm.onnx" in svm.stdout
    rules = edgepack_cli("distill", "t.onnx", "--data", "train.npz", "--rules", "--max-rules", "5", "--dry-run", cwd=tmp_path)
    assert rules.returncode == 0 and "max_rules=5" in rules.stdout and "t_rules.rules.txt" in rules.stdout
    bad = edgepack_cli("distill", "t.onnx", "--data", "train.npz", "--svm", "--kernel", "poly", cwd=tmp_path)
    assert bad.returncode == 2 and "poly" in bad.stderr
    names = edgepack_cli("distill", "t.onnx", "--data", "train.npz", "--svm", "--feature-names", "n.txt", cwd=tmp_path)
    assert (names.returncode, names.stderr.strip()) == (
        1, "error: --feature-names names the features of a rule set; add --rules, or drop --feature-names")
