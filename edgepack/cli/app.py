"""The `edgepack` command: one typer app, one file per command, errors printed in one place."""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from typer._click import exceptions as click  # typer vendors click; its usage errors are these classes

from edgepack import __version__
from edgepack.cli import (
    bench,
    build,
    deploy,
    distill,
    doctor,
    inspect,
    keygen,
    monitor,
    prune,
    quantize,
    registry,
    run,
    sign,
    targets,
    tune,
    verify,
)
from edgepack.errors import EXIT_INTERNAL, EXIT_USAGE, EXIT_USER, BundleError, first_line

app = typer.Typer(
    name="edgepack",
    help="Compile, package and verify ML models for edge devices with Apache TVM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
device_app = typer.Typer(
    name="device",
    help="Manage bundles on device stores: deploy, status, versions, rollback, remove.",
    no_args_is_help=True,
)
DEVICE_COMMANDS = ("deploy", "status", "versions", "rollback", "remove", "repair")
_state = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        print(f"edgepack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and third-party warnings."),
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="Print edgepack's version and exit."
    ),
) -> None:
    _state["debug"] = debug
    if not debug:
        quiet_third_party()


def quiet_third_party() -> None:
    """Warnings and log lines of torch, onnx and TVM that the user cannot act on stay hidden (shown with --debug)."""
    warnings.simplefilter("ignore")
    for name in ("torch", "onnxscript", "onnx_ir", "onnxruntime", "tvm"):
        logging.getLogger(name).setLevel(logging.ERROR)


for module in (
    build,
    quantize,
    prune,
    distill,
    tune,
    inspect,
    run,
    verify,
    bench,
    targets,
    doctor,
    registry,
    monitor,
    keygen,
    sign,
):
    module.register(app)
deploy.register(device_app)  # `edgepack device deploy|status|versions|rollback|remove`
deploy.register(app)  # the old top-level names stay as aliases, out of the help screen
for info in app.registered_commands:
    if info.name in DEVICE_COMMANDS:
        info.hidden = True
app.add_typer(device_app)


def _usage_error(exc: click.UsageError) -> str:
    """typer's boxed usage error as one line: the problem, then where the command's options are listed."""
    command = exc.ctx.command_path if exc.ctx else "edgepack"
    problem = exc.format_message().rstrip(".")
    return f"error: {problem[:1].lower() + problem[1:]}; see `{command} --help`"


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
        code = app(prog_name="edgepack", standalone_mode=False)
    except click.NoArgsIsHelpError as exc:  # `edgepack`, `edgepack device`: the help screen
        print(exc.ctx.get_help() if exc.ctx else "")
        sys.exit(EXIT_USAGE)
    except click.UsageError as exc:
        print(_usage_error(exc), file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except typer.Abort:
        print("error: interrupted; nothing was left half-written", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as exc:  # e.g. a file option that click itself checks
        print(f"error: {first_line(exc.format_message())}; see `edgepack --help`", file=sys.stderr)
        sys.exit(exc.exit_code)
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
        print(
            f"error: internal error ({type(exc).__name__}: {first_line(exc)}); "
            "rerun with --debug and report the traceback",
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)
