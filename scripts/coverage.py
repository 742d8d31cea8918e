"""Run ONNX's node test cases through edgepack's pipeline and write the results by class (docs/coverage.md).

    .venv/bin/python scripts/coverage.py --every 4 [--native] [--json results.json] [--markdown docs/coverage.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from edgepack.measure.coverage import EXCLUDED, PASSED, CaseResult, node_cases, run_case, shipped_cases, summarize
from edgepack.targets import load_target


def markdown(results: list[CaseResult], summary: dict, every: int, native: bool, target: str = "x86_64") -> str:
    """The table by outcome, the failing ops by class, and every remaining case with its one-line reason."""
    lines = ["# Op coverage: ONNX's node test cases through edgepack", "",
             f"`scripts/coverage.py --every {every}{' --native' if native else ''}` on {target}: "
             f"{summary['cases']} cases (every {every}th of the `onnx` package's node test cases), "
             f"{summary['tensor_cases']} with tensor values only; each is pre-flighted, imported and compiled by TVM, "
             "packaged with the case's inputs and expected outputs as golden vectors and verified through the "
             f"{'native loader under qemu-user' if target != 'x86_64' else 'Python and native loaders' if native else 'Python loader'}.", "",
             f"**Pass share: {summary['pass_share']:.1%}** of the tensor cases.", "",
             "| outcome | cases |", "|---|---|"]
    lines += [f"| {outcome} | {count} |" for outcome, count in sorted(summary["counts"].items(), key=lambda kv: -kv[1])]
    by_class = defaultdict(list)
    for result in results:
        if result.outcome not in (PASSED, EXCLUDED):
            by_class[result.outcome].append(result)
    for outcome, failing in sorted(by_class.items()):
        lines += ["", f"## {outcome} ({len(failing)})", "", "| case | ops | reason |", "|---|---|---|"]
        lines += [f"| {r.name} | {' '.join(r.ops)} | {r.reason.replace('|', '/')[:220]} |" for r in failing]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=4, help="run every N-th case (1: all)")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--match", default="", help="only the cases whose name contains this text (e.g. cast)")
    parser.add_argument("--native", action="store_true", help="verify through the native loader too")
    parser.add_argument("--target", default="x86_64", help="a target name or file; another arch is verified by its native "
                        "loader under qemu-user")
    parser.add_argument("--shipped", action="store_true", help="the ONNX files of onnx's backend test data instead")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    target = load_target(args.target)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgepack-coverage-") as workdir:
        cases = shipped_cases()[args.offset::args.every] if args.shipped else node_cases(args.every, args.offset)
        for case in (case for case in cases if args.match in case.name):
            started = time.perf_counter()
            result = run_case(case, Path(workdir), target, native=args.native)
            results.append(result)
            print(f"{result.outcome:15s} {time.perf_counter() - started:5.1f}s {case.name} {result.reason[:150]}", flush=True)
    summary = summarize(results)
    print(json.dumps(summary))
    print("top reasons:", Counter(r.reason[:90] for r in results if r.outcome not in (PASSED, EXCLUDED)).most_common(15))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "results": [r.to_json() for r in results]}, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(results, summary, args.every, args.native, target.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
