"""`edgepack bench BUNDLE --rpc-tracker HOST:PORT --rpc-key KEY`: benchmark on a board through TVM RPC.

TVM's own tracker hands out a server registered under the key (`python -m tvm.exec.rpc_tracker`,
`python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` on the board); no scheduler of ours.
The bundle's digests are checked here, its library uploaded and loaded there, weights and inputs
copied to the remote device once, then TVM's `time_evaluator` times `main` there (the stateful VM
call, so no copies are timed) and the outputs are checked against the golden vectors.
"""

from __future__ import annotations

import socket
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError, first_line
from edgepack.runtime import bundle_format

TIMED = ("time_evaluator over the VM's invoke_stateful('main') on inputs and weights already on the remote device; "
         "the first call is discarded; each repeat is the mean of `number` calls; no copies are timed")


@dataclass(frozen=True)
class RpcBenchConfig:
    """The tracker and key, untimed warm-up calls, and `repeat` timings of `number` calls each."""

    tracker: str
    key: str
    warmup: int = 10
    number: int = 10
    repeat: int = 10
    session_timeout_s: float = 600.0
    connect_timeout_s: float = 10.0


def parse_tracker(text: str) -> tuple[str, int]:
    """`host:port` → (host, port), with a one-line error otherwise."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EdgepackError(f"--rpc-tracker '{text}' is not HOST:PORT", "pass e.g. --rpc-tracker 127.0.0.1:9190")
    return host.strip("[]"), int(port)


def _connect(config: RpcBenchConfig):
    from tvm import rpc

    host, port = parse_tracker(config.tracker)
    try:  # fail fast: connect_tracker itself retries for a minute
        socket.create_connection((host, port), timeout=config.connect_timeout_s).close()
        tracker = rpc.connect_tracker(host, port)
        summary = tracker.summary()
    except (OSError, RuntimeError) as exc:
        raise EdgepackError(f"cannot reach the RPC tracker at {host}:{port} ({first_line(exc)})",
                            "start one with `python -m tvm.exec.rpc_tracker --host HOST --port PORT`") from None
    keys = sorted(summary.get("queue_info", {}))
    if config.key not in keys:
        raise EdgepackError(f"no RPC server is registered under key '{config.key}' at {host}:{port} (keys: {', '.join(keys) or 'none'})",
                            "start one on the board with `python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`")
    return tracker


def _remote_threads(remote) -> int | None:
    try:
        return int(remote.get_function("runtime.NumThreads")())
    except Exception:  # not every runtime registers it; the protocol then says unknown
        return None


def bench_rpc(bundle_dir: Path, config: RpcBenchConfig, arrays: list[np.ndarray] | None = None) -> dict:
    """Benchmark the bundle on the RPC server that the tracker hands out for `config.key`."""
    if config.number < 1 or config.repeat < 1 or config.warmup < 0:
        raise EdgepackError("RPC bench needs --runs >= --repeat >= 1 and --warmup >= 0", "fix the option")
    bundle_dir = Path(bundle_dir)
    manifest = bundle_format.read_manifest(bundle_dir)
    bundle_format.check_files(bundle_dir, manifest)
    specs = [bundle_format.TensorSpec.from_json(entry) for entry in manifest["inputs"]]
    golden = manifest["golden"]["cases"][0]
    golden_inputs = [bundle_format.load_npy(bundle_dir / rel) for rel in golden["inputs"]]
    inputs = [np.asarray(array) for array in arrays] if arrays is not None else golden_inputs
    inputs = [bundle_format.from_bits(array, spec.dtype) for array, spec in zip(inputs, specs)] + inputs[len(specs):]
    bundle_format.check_inputs(specs, inputs)
    tracker = _connect(config)

    import tvm
    from tvm.runtime.vm import VirtualMachine

    try:
        remote = tracker.request(config.key, priority=1, session_timeout=config.session_timeout_s)
        library = bundle_dir / manifest["library"]
        remote.upload(str(library))
        device = remote.cpu()
        vm = VirtualMachine(remote.load_module(library.name), device)
        weights = tvm.runtime.load_param_dict((bundle_dir / manifest["params"]["file"]).read_bytes())
        params = [tvm.runtime.tensor(weights[name].numpy(), device) for name in manifest["params"]["names"]]
        vm.set_input("main", *[tvm.runtime.tensor(bundle_format.to_container(np.asarray(a, order="C")), device) for a in inputs],
                     *params)  # float8, int4...: their containers
        for _ in range(config.warmup):
            vm.invoke_stateful("main")
        timer = vm.time_evaluator("invoke_stateful", device, number=config.number, repeat=config.repeat)
        timing = timer("main")
        outputs = vm.get_outputs("main")
        outputs = [outputs] if hasattr(outputs, "numpy") else list(outputs)
        outputs = [bundle_format.from_bits(tensor.numpy(), entry["dtype"]) for tensor, entry in zip(outputs, manifest["outputs"])]
        threads = _remote_threads(remote)
    except EdgepackError:
        raise
    except Exception as exc:  # TVM raises several types across RPC; all mean the board could not run it
        raise EdgepackError(f"benchmarking through RPC key '{config.key}' failed ({first_line(exc)})",
                            "check that the server's architecture matches the bundle's target and that it runs the TVM runtime") from None
    repeats_ms = [float(seconds) * 1000.0 for seconds in timing.results]
    report = {
        "bundle": str(bundle_dir), "model": manifest.get("name"), "version": manifest.get("version"),
        "device": f"rpc://{config.tracker}/{config.key}",
        "protocol": {"where": "on the TVM RPC server", "warmup": config.warmup, "number": config.number,
                     "repeat": config.repeat, "runs": config.number * config.repeat, "threads": threads,
                     "threads_source": "the server's runtime.NumThreads" if threads else "unknown",
                     "inputs_from": "files" if arrays is not None else "golden", "copies_timed": False, "timed": TIMED},
        "results": {"median_ms": statistics.median(repeats_ms), "min_ms": min(repeats_ms), "mean_ms": statistics.fmean(repeats_ms),
                    "max_ms": max(repeats_ms), "repeat_means_ms": repeats_ms},
    }
    if arrays is None:
        atol, rtol = float(manifest["golden"]["atol"]), float(manifest["golden"]["rtol"])
        refs = [bundle_format.from_bits(bundle_format.load_npy(bundle_dir / rel), entry["dtype"])
                for rel, entry in zip(golden["outputs"], manifest["outputs"])]
        checks = [bundle_format.compare(got, ref, atol, rtol) for got, ref in zip(outputs, refs)]
        report["golden_check"] = {"passed": all(c["passed"] for c in checks), "max_abs_err": max(c["max_abs_err"] for c in checks)}
    return report
