"""Targets are TOML files (targets/*.toml, installed as package data) read into a frozen spec.

The package sees targets/ through the link edgepack/target_files, so a source checkout and an
installed wheel find them in the same place.
"""

from __future__ import annotations

import difflib
import re
import platform
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from edgepack.errors import EdgepackError

ARCHES = ("x86_64", "aarch64")
DEVICES = ("cpu", "cuda")
_GPU_ARCH = re.compile(r"sm_(\d)(\d)[af]?")  # a CUDA compute capability: sm_87, sm_90a

_TOP_KEYS = {"name", "description", "arch", "device", "tvm", "toolchain", "capabilities"}
_REQUIRED_KEYS = {"name", "arch", "device", "tvm", "toolchain"}
_TOOLCHAIN_KEYS = {"cxx", "apt_packages", "glibc", "emulator", "sysroot", "emulator_apt_packages"}
_CAPABILITY_KEYS = {"precisions", "cpu_features"}


@dataclass(frozen=True)
class Toolchain:
    """The C++ compiler that builds code for the target, the glibc floor of what it produces,
    and the user-mode emulator that runs that code here (empty when it runs natively)."""

    cxx: str
    apt_packages: tuple[str, ...] = ()
    glibc: str = "2.34"
    emulator: str = ""
    sysroot: str = ""
    emulator_apt_packages: tuple[str, ...] = ()


@dataclass(frozen=True)
class TargetSpec:
    """A resolved deployment target: what TVM compiles for and what the device can do."""

    name: str
    description: str
    arch: str
    device: str
    tvm: Mapping[str, Any]
    toolchain: Toolchain
    precisions: tuple[str, ...]
    cpu_features: tuple[str, ...]
    source: str

    def supports(self, capability: str) -> bool:
        """Whether the target lists this precision or CPU feature, or is this GPU arch (`sm_87`)."""
        return capability in self.precisions or capability in self.cpu_features or capability == self.gpu_arch

    @property
    def gpu_arch(self) -> str | None:
        """The CUDA compute capability the GPU code is built for (`sm_87`), None for CPU targets."""
        return str(self.tvm["arch"]) if self.device == "cuda" else None

    def runs_on_this_machine(self) -> bool:
        """Whether code for this target can be executed here without emulation: this arch and every listed CPU
        feature (an AVX-512 target on an AVX2 machine cannot). GPU targets: never assumed; the loaders probe for a
        CUDA driver themselves."""
        from edgepack.runtime.bundle_format import missing_cpu_features

        return self.arch == platform.machine() and self.device == "cpu" and not missing_cpu_features(self.cpu_features)

    def tvm_target(self):
        """The `tvm.target.Target` built from the `[tvm]` table, unchanged."""
        import tvm

        try:
            return tvm.target.Target(dict(self.tvm))
        except Exception as exc:  # TVM reports bad target dicts with several exception types
            raise EdgepackError(f"target '{self.name}' ({self.source}): TVM rejects its [tvm] table: {exc}",
                                "fix the [tvm] table in the target file") from None

    def to_json(self) -> dict:
        """The fully resolved target, as recorded in a bundle's manifest."""
        return {
            "name": self.name,
            "description": self.description,
            "arch": self.arch,
            "device": self.device,
            "tvm": dict(self.tvm),
            "toolchain": {"cxx": self.toolchain.cxx, "apt_packages": list(self.toolchain.apt_packages),
                          "glibc": self.toolchain.glibc, "emulator": self.toolchain.emulator,
                          "sysroot": self.toolchain.sysroot,
                          "emulator_apt_packages": list(self.toolchain.emulator_apt_packages)},
            "capabilities": {"precisions": list(self.precisions), "cpu_features": list(self.cpu_features),
                             **({"gpu_arch": self.gpu_arch} if self.gpu_arch else {})},
        }


def _refuse_unknown(keys: set[str], allowed: set[str], where: str, source: str) -> None:
    for key in sorted(keys - allowed):
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(sorted(allowed))}"
        raise EdgepackError(f"target file {source}: unknown key '{key}' in {where}", hint)


def _string_list(value: Any, what: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise EdgepackError(f"target file {source}: {what} must be a list of strings", "write it as [\"a\", \"b\"]")
    return tuple(value)


def _check_cuda_tvm(tvm: dict, arch: str, source: str) -> None:
    """A cuda target's [tvm]: kind cuda, arch sm_XY, and a [tvm.host] llvm table for the host `arch`."""
    if tvm.get("kind") != "cuda":
        raise EdgepackError(f"target file {source}: device \"cuda\" needs [tvm] kind = \"cuda\"", "set kind = \"cuda\" in [tvm]")
    if not isinstance(tvm.get("arch"), str) or not _GPU_ARCH.fullmatch(tvm["arch"]):
        raise EdgepackError(f"target file {source}: [tvm] arch must name the GPU's compute capability like \"sm_87\"",
                            "set arch = \"sm_80\", \"sm_86\", \"sm_87\", \"sm_89\" or \"sm_90\"")
    host = tvm.get("host")
    if not isinstance(host, dict) or host.get("kind") != "llvm":
        raise EdgepackError(f"target file {source}: a cuda target needs a [tvm.host] table with kind = \"llvm\"",
                            "add [tvm.host] with kind and mtriple for the host CPU (see targets/cuda.toml)")
    if not str(host.get("mtriple", "")).startswith(arch):
        raise EdgepackError(f"target file {source}: [tvm.host] mtriple '{host.get('mtriple', '')}' does not match arch '{arch}'",
                            f"set mtriple = \"{arch}-linux-gnu\"")


def parse_target(text: str, source: str) -> TargetSpec:
    """Parse and check the text of a target file; `source` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EdgepackError(f"target file {source} is not valid TOML ({exc})", "fix the syntax") from None
    _refuse_unknown(set(data), _TOP_KEYS, "the top level", source)
    missing = sorted(_REQUIRED_KEYS - set(data))
    if missing:
        raise EdgepackError(f"target file {source} lacks {', '.join(missing)}", "add the missing keys (see targets/x86_64.toml)")
    for key in ("name", "arch", "device"):
        if not isinstance(data[key], str):
            raise EdgepackError(f"target file {source}: '{key}' must be a string", "quote the value")
    if data["arch"] not in ARCHES:
        raise EdgepackError(f"target file {source}: unknown arch '{data['arch']}'", f"use one of {', '.join(ARCHES)}")
    if data["device"] not in DEVICES:
        raise EdgepackError(f"target file {source}: unknown device '{data['device']}'", f"use one of {', '.join(DEVICES)}")
    for table in ("tvm", "toolchain", "capabilities"):
        if not isinstance(data.get(table, {}), dict):
            raise EdgepackError(f"target file {source}: [{table}] must be a table", f"write it as a [{table}] section")
    if "kind" not in data["tvm"]:
        raise EdgepackError(f"target file {source}: [tvm] has no 'kind'", "add kind = \"llvm\"")
    if data["device"] == "cuda":
        _check_cuda_tvm(data["tvm"], data["arch"], source)
    toolchain = data["toolchain"]
    _refuse_unknown(set(toolchain), _TOOLCHAIN_KEYS, "[toolchain]", source)
    for key in ("cxx", "glibc", "emulator", "sysroot"):
        if not isinstance(toolchain.get(key, ""), str) or (key == "cxx" and not toolchain.get(key)):
            raise EdgepackError(f"target file {source}: [toolchain] {key} must be a string", "e.g. cxx = \"g++\"")
    if not re.fullmatch(r"\d+\.\d+", toolchain.get("glibc", "2.34")):
        raise EdgepackError(f"target file {source}: [toolchain] glibc must look like \"2.34\"", "write major.minor")
    capabilities = data.get("capabilities", {})
    _refuse_unknown(set(capabilities), _CAPABILITY_KEYS, "[capabilities]", source)
    return TargetSpec(
        name=data["name"],
        description=str(data.get("description", "")),
        arch=data["arch"],
        device=data["device"],
        tvm=MappingProxyType(dict(data["tvm"])),
        toolchain=Toolchain(
            cxx=toolchain["cxx"],
            apt_packages=_string_list(toolchain.get("apt_packages", []), "apt_packages", source),
            glibc=toolchain.get("glibc", "2.34"),
            emulator=toolchain.get("emulator", ""),
            sysroot=toolchain.get("sysroot", ""),
            emulator_apt_packages=_string_list(toolchain.get("emulator_apt_packages", []), "emulator_apt_packages", source),
        ),
        precisions=_string_list(capabilities.get("precisions", ["float32"]), "precisions", source),
        cpu_features=_string_list(capabilities.get("cpu_features", []), "cpu_features", source),
        source=source,
    )


def _bundled_files() -> dict[str, Any]:
    return {
        entry.name.removesuffix(".toml"): entry
        for entry in resources.files("edgepack").joinpath("target_files").iterdir()
        if entry.name.endswith(".toml")
    }


def target_names() -> list[str]:
    """Names of the targets shipped with edgepack."""
    return sorted(_bundled_files())


def load_target(name_or_path: str | Path) -> TargetSpec:
    """A shipped target by name (`arm64`) or any target file by path (`my/board.toml`)."""
    text_arg = str(name_or_path)
    if text_arg.endswith(".toml") or "/" in text_arg:
        path = Path(text_arg)
        if not path.is_file():
            raise EdgepackError(f"target file '{path}' does not exist", "pass a shipped target name or an existing .toml file")
        return parse_target(path.read_text(encoding="utf-8"), str(path))
    files = _bundled_files()
    if text_arg not in files:
        close = difflib.get_close_matches(text_arg, sorted(files), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise EdgepackError(f"unknown target '{text_arg}'", f"{hint}valid targets: {', '.join(sorted(files))}")
    return parse_target(files[text_arg].read_text(encoding="utf-8"), f"targets/{text_arg}.toml")
