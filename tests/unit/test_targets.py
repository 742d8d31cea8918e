"""Target files: shipped ones by name, any file by path, and one-line refusals of bad ones."""

from __future__ import annotations

import platform
import tomllib
from pathlib import Path

import pytest

from edgepack.errors import EdgepackError
from edgepack.targets import TargetSpec, load_target, parse_target, target_names

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["arm64", "cuda", "cuda-sm86", "cuda-sm89", "cuda-sm90", "jetson-orin", "neoverse-v1", "rpi4", "rpi5",
           "x86_64", "x86_64-generic", "x86_64-v4", "x86_64-vnni"]

GOOD = """\
name = "board"
description = "a test board"
arch = "aarch64"
device = "cpu"

[tvm]
kind = "llvm"
mtriple = "aarch64-linux-gnu"
mattr = ["+neon", "+dotprod"]

[toolchain]
cxx = "aarch64-linux-gnu-g++"
apt_packages = ["g++-aarch64-linux-gnu"]
glibc = "2.31"
emulator = "qemu-aarch64"

[capabilities]
precisions = ["float32", "int8"]
cpu_features = ["asimd", "asimddp"]
"""


def test_shipped_target_names():
    assert target_names() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_target_loads_and_matches_its_file(name):
    spec = load_target(name)
    raw = tomllib.loads((REPO / "targets" / f"{name}.toml").read_text())
    assert spec.name == name == raw["name"]
    assert spec.arch == raw["arch"]
    assert dict(spec.tvm) == raw["tvm"]
    assert spec.toolchain.cxx == raw["toolchain"]["cxx"]
    assert spec.source == f"targets/{name}.toml"


def test_x86_64_by_name():
    spec = load_target("x86_64")
    assert (spec.name, spec.arch, spec.device) == ("x86_64", "x86_64", "cpu")
    assert dict(spec.tvm) == {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"}
    assert spec.toolchain.cxx == "g++"
    assert spec.toolchain.glibc == "2.34"
    assert spec.supports("avx2") and spec.supports("fma") and spec.supports("int8")
    assert not spec.supports("i8mm")
    assert not load_target("x86_64-generic").supports("avx2")


def test_x86_64_v4_is_avx512_with_16_lanes_and_runs_only_where_the_cpu_has_it():
    from edgepack.compiler.doctor import fullest_native_target
    from edgepack.compiler.schedules import vector_lanes
    from edgepack.runtime.bundle_format import cpu_features

    spec = load_target("x86_64-v4")
    assert dict(spec.tvm)["mcpu"] == "x86-64-v4" and vector_lanes(spec.tvm_target()) == 16
    assert vector_lanes(load_target("x86_64").tvm_target()) == 8
    assert spec.supports("avx512f") and spec.supports("avx512vl") and not spec.supports("avx512_vnni")
    here = cpu_features()
    assert spec.runs_on_this_machine() == ("avx512f" in here and platform.machine() == "x86_64")
    specs = [load_target(name) for name in SHIPPED]
    fullest = fullest_native_target(specs)
    if platform.machine() == "x86_64":  # the AVX-512 target where the CPU has it, else the AVX2 default (CI hosts)
        assert fullest.name == ("x86_64-vnni" if "avx512_vnni" in here else "x86_64-v4" if "avx512f" in here else "x86_64" if "avx2" in here else "x86_64-generic")
    assert fullest is None or all(len(s.cpu_features) <= len(fullest.cpu_features) for s in specs if s.runs_on_this_machine())


def test_spec_is_frozen():
    spec = load_target("x86_64")
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.tvm["kind"] = "c"  # type: ignore[index]


@pytest.mark.parametrize("as_path", [str, Path])
def test_target_by_path(tmp_path, as_path):
    path = tmp_path / "board.toml"
    path.write_text(GOOD)
    spec = load_target(as_path(path))
    assert spec.name == "board"
    assert spec.description == "a test board"
    assert spec.arch == "aarch64"
    assert dict(spec.tvm) == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}
    assert spec.toolchain.apt_packages == ("g++-aarch64-linux-gnu",)
    assert spec.toolchain.glibc == "2.31"
    assert spec.toolchain.emulator == "qemu-aarch64"
    assert spec.toolchain.sysroot == ""
    assert spec.precisions == ("float32", "int8")
    assert spec.cpu_features == ("asimd", "asimddp")
    assert spec.supports("asimddp")
    assert spec.source == str(path)


def test_to_json_is_the_resolved_target(tmp_path):
    spec = parse_target(GOOD, "board.toml")
    assert spec.to_json() == {
        "name": "board",
        "description": "a test board",
        "arch": "aarch64",
        "device": "cpu",
        "tvm": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]},
        "toolchain": {"cxx": "aarch64-linux-gnu-g++", "apt_packages": ["g++-aarch64-linux-gnu"], "glibc": "2.31",
                      "emulator": "qemu-aarch64", "sysroot": "", "emulator_apt_packages": []},
        "capabilities": {"precisions": ["float32", "int8"], "cpu_features": ["asimd", "asimddp"]},
    }


def test_defaults_when_capabilities_are_absent():
    text = GOOD.split("[capabilities]")[0]
    spec = parse_target(text, "board.toml")
    assert spec.precisions == ("float32",)
    assert spec.cpu_features == ()


def test_unknown_name_lists_valid_targets_and_suggests_one():
    with pytest.raises(EdgepackError) as info:
        load_target("x86-64")
    assert info.value.problem == "unknown target 'x86-64'"
    assert info.value.fix == f"did you mean 'x86_64'? valid targets: {', '.join(SHIPPED)}"
    assert info.value.exit_code == 1


def test_unknown_name_without_a_close_match_still_lists_valid_targets():
    with pytest.raises(EdgepackError) as info:
        load_target("zzzz")
    assert "did you mean" not in str(info.value)
    assert info.value.fix == f"valid targets: {', '.join(SHIPPED)}"


def test_missing_target_file(tmp_path):
    with pytest.raises(EdgepackError, match="does not exist"):
        load_target(tmp_path / "nope.toml")


@pytest.mark.parametrize("old, new, where, hint", [
    ('description = "a test board"', 'descripton = "a test board"', "the top level", "did you mean 'description'?"),
    ('cxx = "aarch64-linux-gnu-g++"', 'cxx = "aarch64-linux-gnu-g++"\ncxxx = "g++"', "[toolchain]", "did you mean 'cxx'?"),
    ('precisions = ["float32", "int8"]', 'precision = ["float32", "int8"]', "[capabilities]", "did you mean 'precisions'?"),
])
def test_unknown_key_is_refused_with_a_hint(tmp_path, old, new, where, hint):
    path = tmp_path / "board.toml"
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(EdgepackError) as info:
        load_target(path)
    key = new.split("\n")[-1].split(" =")[0]
    assert info.value.problem == f"target file {path}: unknown key '{key}' in {where}"
    assert info.value.fix == hint


def test_unknown_key_without_a_close_match_lists_allowed_keys():
    with pytest.raises(EdgepackError) as info:
        parse_target(GOOD + "\n[zebra]\nstripes = 3\n", "board.toml")
    assert "unknown key 'zebra' in the top level" in info.value.problem
    assert info.value.fix.startswith("allowed keys: arch, capabilities, description, device, name, toolchain, tvm")


def test_bad_toml_is_refused(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "broken\narch = x86_64\n')
    with pytest.raises(EdgepackError) as info:
        load_target(path)
    assert info.value.problem.startswith(f"target file {path} is not valid TOML (")
    assert info.value.fix == "fix the syntax"
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("old, new, message", [
    ('arch = "aarch64"\n', "", "lacks arch"),
    ('arch = "aarch64"', 'arch = "riscv64"', "unknown arch 'riscv64'"),
    ('device = "cpu"', 'device = "npu"', "unknown device 'npu'"),
    ('kind = "llvm"\n', "", "[tvm] has no 'kind'"),
    ('glibc = "2.31"', 'glibc = "two"', "glibc must look like"),
    ('cpu_features = ["asimd", "asimddp"]', 'cpu_features = "asimd"', "cpu_features must be a list of strings"),
    ('name = "board"', "name = 3", "'name' must be a string"),
])
def test_invalid_values_are_refused(old, new, message):
    assert old in GOOD
    with pytest.raises(EdgepackError) as info:
        parse_target(GOOD.replace(old, new), "board.toml")
    assert message in info.value.problem
    assert info.value.problem.startswith("target file board.toml")


def test_tvm_table_is_handed_to_tvm_unchanged():
    target = load_target("x86_64").tvm_target()
    assert target.kind.name == "llvm"
    assert str(target.attrs["mcpu"]) == "x86-64-v3"
    assert str(target.attrs["mtriple"]) == "x86_64-linux-gnu"


def test_tvm_rejecting_the_table_is_a_user_error():
    spec = parse_target(GOOD.replace('kind = "llvm"', 'kind = "no-such-kind"'), "board.toml")
    assert isinstance(spec, TargetSpec)
    with pytest.raises(EdgepackError) as info:
        spec.tvm_target()
    assert info.value.problem.startswith("target 'board' (board.toml): TVM rejects its [tvm] table")
    assert "no-such-kind" in info.value.problem
    assert "\n" not in str(info.value)
