"""Errors carry a problem, a fix and an exit code; the CLI prints `error: <problem>; <fix>`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgepack import errors
from edgepack.errors import EdgepackError, IntegrityError, InternalError, VerificationError
from edgepack.runtime import bundle_format


def test_exit_codes_are_the_documented_ones():
    assert (errors.EXIT_USER, errors.EXIT_USAGE, errors.EXIT_INTEGRITY, errors.EXIT_VERIFY, errors.EXIT_INTERNAL) == (1, 2, 3, 4, 70)
    assert EdgepackError("p", "f").exit_code == 1
    assert IntegrityError("p", "f").exit_code == 3
    assert VerificationError("p", "f").exit_code == 4
    assert InternalError("bug").exit_code == 70


def test_problem_and_fix_make_one_message():
    error = EdgepackError("model file 'm.onnx' does not exist", "check the path")
    assert (error.problem, error.fix) == ("model file 'm.onnx' does not exist", "check the path")
    assert str(error) == "model file 'm.onnx' does not exist; check the path"


def test_the_loader_and_the_compiler_share_one_error_family():
    """The CLI catches BundleError once; the loader's errors and edgepack's must both be caught."""
    assert errors.BundleError is bundle_format.BundleError
    assert issubclass(EdgepackError, bundle_format.BundleError)
    assert issubclass(bundle_format.IntegrityError, bundle_format.BundleError)
    assert not issubclass(InternalError, bundle_format.BundleError)


def test_fix_is_required():
    with pytest.raises(TypeError):
        EdgepackError("only a problem")  # type: ignore[call-arg]


def test_cli_main_prints_one_line_and_exits_with_the_error_code(monkeypatch, capsys, tmp_path):
    """`edgepack.cli.app.main` (what the console script runs) on a real refusal: a missing bundle."""
    from edgepack.cli import app

    monkeypatch.setattr("sys.argv", ["edgepack", "inspect", str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as info:
        app.main()
    assert info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"error: bundle '{tmp_path / 'nope'}' is not a directory; "
                            "pass the bundle directory edgepack build wrote\n")


def test_cli_debug_lets_the_error_through(monkeypatch, tmp_path):
    from edgepack.cli import app

    monkeypatch.setattr("sys.argv", ["edgepack", "--debug", "inspect", str(tmp_path / "nope")])
    with pytest.raises(bundle_format.BundleError, match="is not a directory"):
        app.main()


def test_usage_error_keeps_typers_exit_code():
    from edgepack.cli.app import app

    result = CliRunner().invoke(app, ["inspect", "--no-such-option", "x"])
    assert result.exit_code == 2
