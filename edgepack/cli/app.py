"""The `edgepack` command: one typer app, one file per command, errors printed in one place."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import typer

from edgepack.cli import bench, build, deploy, distill, doctor, inspect, keygen, monitor, prune, quantize, registry, run, sign, targets, tune, verify
from edgepack.errors import EXIT_INTERNAL, EXIT_USER, BundleError, first_line

app = typer.Typer(
    name="edgepack",
    help="Compile, package and verify ML models for edge devices with Apache TVM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")) -> None:
    _state["debug"] = debug


for module in (build, quantize, prune, distill, tune, inspect, run, verify, bench, targets, doctor, deploy, registry, monitor, keygen, sign):
    module.register(app)


def _where(exc: OSError) -> str:
    """The file an OSError is about: the destination of a failed copy (filename2) for a full disk,
    with the filesystem it lives on, so the message names the disk to free."""
    path = exc.filename2 if exc.errno == errno.ENOSPC and exc.filename2 else exc.filename
    if not path:
        return ""
    if exc.errno != errno.ENOSPC:
        return f" '{path}'"
    mount = Path(os.path.abspath(os.fsdecode(path)))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return f" writing '{os.fsdecode(path)}' (filesystem at {mount})"


def main() -> None:
    """Entry point: runs the app and turns every error into one line and an exit code."""
    try:
        app(prog_name="edgepack")
    except BundleError as exc:
        if _state["debug"]:
            raise
        print(f"error: {exc.problem}; {exc.fix}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was left half-written", file=sys.stderr)
        sys.exit(130)
    except MemoryError:
        if _state["debug"]:
            raise
        print("error: out of memory; a tensor or model is larger than this machine can hold: check the model's dimensions",
              file=sys.stderr)
        sys.exit(EXIT_USER)
    except OSError as exc:  # the environment, not a bug: a full disk, a read-only or missing place
        if _state["debug"]:
            raise
        where = _where(exc)
        print(f"error: {exc.strerror or first_line(exc)}{where}; free space or check permissions there, then run it again",
              file=sys.stderr)
        sys.exit(EXIT_USER)
    except Exception as exc:  # a bug in edgepack: one line unless --debug
        if _state["debug"]:
            raise
        print(f"error: internal error ({type(exc).__name__}: {first_line(exc)}); "
              "rerun with --debug and report the traceback", file=sys.stderr)
        sys.exit(EXIT_INTERNAL)
