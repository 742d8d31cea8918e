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
