"""What pruning changed, measured: per-layer channels and sparsity, parameters, MACs, params bytes,
latency of the compiled model and quality, before and after; printed as rich tables."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgepack.compression.prune.criteria import prunable_layers
from edgepack.measure.timing import SETTLE_S, TURN_WARMUP, timed_rounds


def layer_shapes(module) -> dict[str, dict]:
    """Per conv/linear layer: output and input channels, weight count and nonzero weights."""
    rows = {}
    for name, layer in prunable_layers(module).items():
        weight = layer.weight.detach()
        rows[name] = {"type": type(layer).__name__, "out": int(weight.shape[0]), "in": int(weight.shape[1]),
                      "weights": int(weight.numel()), "nonzero": int((weight != 0).sum())}
    return rows


def model_counts(module, example_inputs) -> dict:
    """Parameters (all and nonzero) and multiply-accumulates of one forward pass (Torch-Pruning's counter)."""
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(module, example_inputs)
    nonzero = sum(int((p.detach() != 0).sum()) for p in module.parameters())
    return {"params": int(params), "nonzero_params": nonzero, "macs": int(macs)}


def per_layer(before: dict, after: dict) -> list[dict]:
    """Rows joining the layer shapes before and after: channels kept and weight sparsity."""
    rows = []
    for name, old in before.items():
        new = after.get(name, old)
        rows.append({"layer": name, "type": old["type"], "out_before": old["out"], "out_after": new["out"],
                     "in_before": old["in"], "in_after": new["in"], "weights_before": old["weights"],
                     "weights_after": new["weights"], "sparsity": round(1 - new["nonzero"] / max(new["weights"], 1), 4)})
    return rows


def compiled_latency(onnx_path: Path, inputs, target, workdir: Path, runs: int = 100, warmup: int = 10, rounds: int = 5) -> dict:
    """Compile an ONNX file for `target` and time `main` with `edgepack bench`'s protocol (and defaults); also its params bytes."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from edgepack.compiler.compile import compile_model
    from edgepack.frontends.preflight import preflight
    from edgepack.bundle.sparse_params import decode
    from edgepack.frontends.signature import random_inputs

    workdir.mkdir(parents=True, exist_ok=True)
    model, _ = preflight(onnx_path, {spec.name: spec for spec in inputs}, workdir)
    compiled, record = compile_model(model, target, workdir)
    if not target.runs_on_this_machine():
        return {"params_bytes": record.report["params_bytes"], "median_ms": None, "note": "target does not run here"}
    threads = os.cpu_count() or 1  # bench's default thread count
    os.environ["TVM_NUM_THREADS"] = str(threads)
    library = tvm.runtime.load_module(str(compiled.library))
    vm = VirtualMachine(library, tvm.cpu())
    data = compiled.params.read_bytes()
    table = tvm.runtime.load_param_dict(decode(data) if compiled.params.name.endswith(".sparse") else data)
    params = [table[name] for name in compiled.param_names]
    arrays = [tvm.runtime.tensor(array, tvm.cpu()) for array in random_inputs(list(model.inputs), 0)]
    main = vm["main"]
    times = timed_rounds({"compiled": lambda: main(*arrays, *params)}, warmup, runs // rounds, rounds)["compiled"]
    return {"params_bytes": record.report["params_bytes"], "params_file": compiled.params.name,
            "median_ms": round(float(np.median(times)), 4), "runs": len(times),
            "protocol": f"as `edgepack bench`: {warmup} warm-up calls, {rounds} rounds of {runs // rounds} timed calls of main, "
                        f"each after a {SETTLE_S} s pause and {TURN_WARMUP} untimed calls; {threads} threads"}


def _change(before, after) -> str:
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)) or before == 0:
        return ""
    return f"{(after - before) / before * 100:+.1f}%"


def summary_rows(report: dict) -> list[tuple[str, object, object]]:
    """(metric, before, after) rows of a prune report."""
    before, after = report.get("before", {}), report.get("after", {})
    rows = [(key, before.get(key), after.get(key)) for key in ("params", "nonzero_params", "macs", "params_bytes", "median_ms")
            if key in before or key in after]
    quality = report.get("quality")
    if quality:
        metric = quality["metric"]
        rows.append((metric, quality["before"].get(metric, 1.0), quality["after"][metric]))
    return rows


def print_report(report: dict, console) -> None:
    """The before/after table and the per-layer table."""
    from rich.table import Table

    table = Table(title=f"prune: {report.get('granularity')} / {report.get('criterion', {}).get('criterion')}")
    for column in ("metric", "before", "after", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric, old, new in summary_rows(report):
        fmt = (lambda v: f"{v:.4f}") if isinstance(new, float) else (lambda v: "" if v is None else f"{v:,}")
        change = f"{(new - old) * 100:+.2f} points" if metric in ("accuracy", "top1_agreement") and old is not None else _change(old, new)
        table.add_row(metric, fmt(old) if old is not None else "", fmt(new) if new is not None else "", change)
    console.print(table)
    layers = Table(title="layers")
    for column in ("layer", "type", "out channels", "in channels", "weights", "sparsity"):
        layers.add_column(column, justify="left" if column in ("layer", "type") else "right")
    for row in report.get("layers", []):
        layers.add_row(row["layer"], row["type"], f"{row['out_before']} → {row['out_after']}", f"{row['in_before']} → {row['in_after']}",
                       f"{row['weights_before']:,} → {row['weights_after']:,}", f"{row['sparsity'] * 100:.1f}%")
    console.print(layers)
    for line in report.get("notes", []):
        console.print(f"note: {line}", highlight=False)
