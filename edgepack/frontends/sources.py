"""What the user passed as MODEL: an ONNX file, a `.pt2` torch.export program, or `file.py:factory`."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import EdgepackError

_FORMS = "a .onnx file, a .pt2 torch.export program, or path/to/file.py:factory"


@dataclass(frozen=True)
class OnnxSource:
    """An ONNX file given by the user."""

    path: Path

    @property
    def default_name(self) -> str:
        return self.path.stem


@dataclass(frozen=True)
class ExportedProgramSource:
    """A program saved with `torch.export.save`."""

    path: Path

    @property
    def default_name(self) -> str:
        return self.path.stem


@dataclass(frozen=True)
class FactorySource:
    """A Python file and the name of a function in it that returns an `nn.Module`."""

    path: Path
    factory: str

    @property
    def default_name(self) -> str:
        return self.factory


ModelSource = OnnxSource | ExportedProgramSource | FactorySource


def parse_source(text: str) -> ModelSource:
    """Classify the MODEL argument and check that its file exists."""
    if ".py:" in text:
        file_part, factory = text.rsplit(":", 1)
        path = Path(file_part)
        if not factory.isidentifier():
            raise EdgepackError(f"'{factory}' is not a Python function name", "write MODEL as path/to/file.py:factory")
        source: ModelSource = FactorySource(path, factory)
    else:
        path = Path(text)
        if path.suffix == ".pt2":
            source = ExportedProgramSource(path)
        elif path.suffix == ".py":
            raise EdgepackError(f"'{text}' names a Python file but no factory", f"write it as {text}:<function returning nn.Module>")
        else:
            source = OnnxSource(path)
    if not path.is_file():
        raise EdgepackError(f"model file '{path}' does not exist", f"pass {_FORMS}")
    return source


def describe(source: ModelSource) -> dict:
    """The source as recorded in the manifest's provenance."""
    from edgepack.runtime.bundle_format import sha256_file

    kind = {OnnxSource: "onnx", ExportedProgramSource: "torch.export", FactorySource: "torch-factory"}[type(source)]
    record = {"kind": kind, "path": str(source.path), "sha256": sha256_file(source.path)}
    if isinstance(source, FactorySource):
        record["factory"] = source.factory
    return record


def import_file(path: Path):
    """Import a Python file as a fresh module, with one-line errors when it fails."""
    module_name = f"edgepack_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise EdgepackError(f"cannot import '{path}'", "pass a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # sys.exit() in the user's file must not end edgepack as if it had finished
        raise EdgepackError(f"importing '{path}' called sys.exit({exc.code!r})", "guard script code with `if __name__ == \"__main__\":`") from None
    except Exception as exc:  # the user's code may raise anything
        raise EdgepackError(f"importing '{path}' raised {type(exc).__name__}: {exc}", "fix the model file") from None
    return module


def call_factory(source: FactorySource):
    """Import the file, call the factory, check it returned an nn.Module.

    Returns the module in eval mode and the file's `__version__` (None when it declares none).
    """
    import torch

    module = import_file(source.path)
    factory = getattr(module, source.factory, None)
    if not callable(factory):
        functions = sorted(name for name, value in vars(module).items() if inspect.isfunction(value) and not name.startswith("_"))
        raise EdgepackError(f"'{source.path}' has no function '{source.factory}'",
                            f"functions there: {', '.join(functions) or 'none'}")
    try:
        model = factory()
    except SystemExit as exc:
        raise EdgepackError(f"{source.path}:{source.factory}() called sys.exit({exc.code!r})", "return the model from the factory instead") from None
    except Exception as exc:  # the user's code may raise anything
        raise EdgepackError(f"{source.path}:{source.factory}() raised {type(exc).__name__}: {exc}", "fix the factory") from None
    if not isinstance(model, torch.nn.Module):
        raise EdgepackError(f"{source.path}:{source.factory}() returned {type(model).__name__}, not a torch.nn.Module",
                            "return the model from the factory")
    return model.eval(), getattr(module, "__version__", None)
