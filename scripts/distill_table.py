"""The distillation table in docs/distillation.md: teacher, network student, tree, SVM and rule set on two
scikit-learn datasets (digits, breast cancer), each student built into an x86_64 bundle and measured.

    .venv/bin/python scripts/distill_table.py [--out /tmp/distill-table] [--latency-runs 200]

Model selection never sees the test split: the network's best epoch is chosen on 10% of the training
data held out (--val-fraction), the fitted students have fixed settings. Accuracy and fidelity (top-1
agreement with the teacher) are on the test split, measured on the compiled x86_64 bundle; latency is
the bundle's median with `edgepack bench`'s protocol, 1 call = 1 sample. Prints the Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from edgepack.build import build
from edgepack.compression.distill import NetworkStudentConfig, RuleSetStudentConfig, SvmStudentConfig, TreeStudentConfig, distill
from edgepack.runtime.bundle_format import BundleError
from edgepack.examples import cancer, digits
from edgepack.frontends.export import ExportConfig, export_to_onnx, load_torch_model
from edgepack.frontends.sources import parse_source

EXAMPLES = Path(digits.__file__).parent
DATASETS = {
    "digits": (digits.digits_split, f"{EXAMPLES / 'digits.py'}:digits_cnn", f"{EXAMPLES / 'students.py'}:digits_student", "image"),
    "breast cancer": (cancer.cancer_split, f"{EXAMPLES / 'cancer.py'}:cancer_mlp", f"{EXAMPLES / 'cancer.py'}:cancer_student", "features"),
}
FITTED = {"tree (depth 8)": TreeStudentConfig(max_depth=8), "SVM (RBF, 100 Nyström components)": SvmStudentConfig(kernel="rbf", components=100),
          "rule set (≤ 24 rules, ≤ 3 conditions)": RuleSetStudentConfig(max_rules=24, max_conditions=3)}


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _shape(report: dict) -> str:
    if "rules" in report:
        return f"{report['rules']} rules, {report['conditions']} conditions"
    if "leaves" in report:
        return f"{report['leaves']} rules ({report['params']:,} tensor elements)"
    return f"{report['params']:,}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/distill-table"))
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--data", action="append", choices=list(DATASETS), help="only these datasets (repeatable)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    lines = ["| data | model | params / rules | model size | bundle size | latency | accuracy | fidelity |", "|---|---|---|---|---|---|---|---|"]
    for data_name, (split, teacher_factory, student_factory, input_name) in DATASETS.items():
        if args.data and data_name not in args.data:
            continue
        folder = args.out / data_name.replace(" ", "_")
        folder.mkdir(parents=True)
        train_x, test_x, train_y, test_y = split()
        np.savez(folder / "train.npz", **{input_name: train_x, "labels": train_y})
        np.savez(folder / "test.npz", **{input_name: test_x, "labels": test_y})
        teacher = folder / "teacher.onnx"
        export_to_onnx(load_torch_model(parse_source(teacher_factory), {}), teacher, ExportConfig())
        teacher_bundle = build(str(teacher), "x86_64", folder / "teacher").bundle.path
        students = {"network student": NetworkStudentConfig(student_factory, epochs=30), **FITTED}
        for index, (label, config) in enumerate(students.items()):
            try:
                result = distill(str(teacher), config, folder / "train.npz", folder / config.kind, eval_data=folder / "test.npz",
                                 targets=("x86_64",), latency_runs=args.latency_runs, teacher_bundle=None if index else teacher_bundle)
            except BundleError as error:  # a row that says why (the build refused the bundle), and the table goes on
                lines.append(f"| {data_name} | {label} | — | — | — | — | — | — |  <!-- {error.problem[:120]} -->")
                print(lines[-1], flush=True)
                continue
            rows = {row["model"] + "|" + row["target"]: row for row in result.rows}
            if index == 0:
                onnx_row, bundle_row = rows["teacher|ONNX Runtime"], rows["teacher|x86_64 bundle"]
                lines.append(f"| {data_name} | teacher | {onnx_row['params']:,} | {_size(bundle_row['model_bytes'])} | "
                             f"{_size(bundle_row['bundle_bytes'])} | {bundle_row['latency_ms']:.4f} ms | "
                             f"{bundle_row['accuracy'] * 100:.2f}% | 100% |")
                print(lines[-1], flush=True)
            student = result.record.report["student"]
            bundle_row = result.rows[-1]
            lines.append(f"| {data_name} | {label} | {_shape(student)} | {_size(bundle_row['model_bytes'])} | "
                         f"{_size(bundle_row['bundle_bytes'])} | {bundle_row['latency_ms']:.4f} ms | "
                         f"{bundle_row['accuracy'] * 100:.2f}% | {bundle_row['fidelity'] * 100:.2f}% |")
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
