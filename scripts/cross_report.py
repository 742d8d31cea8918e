"""Build the digits CNN and the small ResNet for the arm64 targets and report what issue #3 asks:
per-file sizes, build time, and the max error of the qemu-emulated native loader vs ONNX Runtime.

Usage: .venv/bin/python scripts/cross_report.py [--out docs/arm64.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from edgepack.build import build

EXAMPLES = Path(__file__).resolve().parents[1] / "edgepack" / "examples"
MODELS = {"digits CNN": f"{EXAMPLES / 'digits.py'}:digits_cnn", "small ResNet (1x3x64x64)": f"{EXAMPLES / 'resnet.py'}:resnet_small"}
TARGETS = ("arm64", "rpi4", "rpi5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/arm64.md"))
    args = parser.parse_args()
    rows, sizes = [], {}
    with tempfile.TemporaryDirectory() as out:
        for model, source in MODELS.items():
            for target in TARGETS:
                started = time.perf_counter()
                manifest = build(source, target, Path(out)).bundle.manifest
                seconds = time.perf_counter() - started
                native = manifest["verification"]["native_loader"]
                total = sum(entry["size"] for entry in manifest["files"].values())
                rows.append(f"| {model} | {target} | {seconds:.1f} | {native.get('emulator')} | "
                            f"{native['max_abs_err']:.2e} | {'pass' if native['passed'] else 'FAIL'} | {total / 1e6:.2f} |")
                sizes.setdefault(model, {k: v["size"] for k, v in manifest["files"].items() if not k.startswith("golden/")})
    lines = ["# arm64 bundles, measured", "",
             f"Made by `scripts/cross_report.py` on {time.strftime('%Y-%m-%d')} (x86_64 host, 2 cores; Debian 12 "
             "`g++-aarch64-linux-gnu`, `qemu-aarch64` 7.2). Build time includes the PyTorch export and the emulated "
             "verification; the error is the largest absolute difference between the bundle's own aarch64 native "
             "loader under qemu and ONNX Runtime on x86_64, over 3 golden cases.", "",
             "| model | target | build s | verified with | max abs err | result | bundle MB |", "|---|---|---|---|---|---|---|", *rows, ""]
    for model, files in sizes.items():
        lines += [f"## Files of the {model} bundle (arm64)", "", "| file | bytes |", "|---|---|"]
        lines += [f"| {name} | {size:,} |" for name, size in files.items()]
        lines += ["| golden/ and manifest | small |", ""]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
