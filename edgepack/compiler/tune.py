"""Stage: tune a model's kernels with MetaSchedule into a tuning database that later builds apply.

The database is two JSON-lines files (MetaSchedule's `JSONDatabase`) in one directory per target:
`<cache>/tuning/<target-name>/` where `<cache>` is `edgepack.compiler.wheels.cache_dir()`
(`$EDGEPACK_CACHE`, else `~/.cache/edgepack`). `$EDGEPACK_TUNING_DIR` moves the root (the target name is
still appended); `--database DIR` names one directory exactly. Records are keyed by the kernel's
structure (shapes included), so a build of *any* model with the same workloads reuses them. Every
measured candidate is appended to the files as it is measured: an interrupted run keeps what it
finished; copy the directory to share it.

What was broken or slow with TVM 0.27's defaults here, and what this module does instead:
- MetaSchedule's default builder imports `tvm.s_tir.tensor_intrin` in every worker (80-95 s on this
  2-core machine) against a 30 s timeout, so every candidate failed with only "Build errors: N".
  `_build_kernel` compiles without that import (CPU schedules need no tensor intrinsics).
- measurement ran with the TVM pool's default (half the hardware threads); the runner gets the
  target's core count, the same as the bundle gets at run time.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgepack.artifacts import OnnxModel, StageRecord
from edgepack.compiler.backends import backend_for
from edgepack.compiler.backends.cpu import lower_to_tir
from edgepack.compiler.config import CompileConfig
from edgepack.compiler.compile import import_relax
from edgepack.compiler.int8_dot import dot_feature
from edgepack.compiler.schedules import HAND_WRITTEN, heuristic_schedule, vector_lanes
from edgepack.compiler.tuning_records import RECORD_FILE, WORKLOAD_FILE, open_database, tuning_dir
from edgepack.errors import EdgepackError, first_line
from edgepack.progress import ProgressEvent
from edgepack.targets import TargetSpec

__all__ = ["RpcTracker", "TuneConfig", "TuneProgress", "tune_model", "extract_kernels", "tuning_dir", "open_database",
           "RECORD_FILE", "WORKLOAD_FILE"]



@dataclass(frozen=True)
class RpcTracker:
    """A TVM RPC tracker and the key of the devices to measure on (`--rpc-tracker host:port --rpc-key KEY`)."""

    host: str
    port: int
    key: str
    session_timeout_s: int = 60

    @classmethod
    def parse(cls, address: str, key: str | None) -> "RpcTracker":
        """`host:port` and a key → RpcTracker; one-line errors for anything else."""
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise EdgepackError(f"--rpc-tracker '{address}' is not host:port", "pass e.g. --rpc-tracker 127.0.0.1:9190")
        if not key:
            raise EdgepackError("--rpc-tracker needs --rpc-key", "pass the key the device's rpc_server registered with")
        return cls(host, int(port), key)

    def __str__(self) -> str:
        return f"{self.host}:{self.port} key {self.key}"


@dataclass(frozen=True)
class TuneConfig:
    """How much to tune and where the records go."""

    trials: int = 64  # measured candidates over all kernels (MetaSchedule's max_trials_global)
    database: Path | None = None  # None: tuning_dir(target)
    trials_per_iteration: int = 16  # candidates built and measured per round
    run_timeout_s: float = 60.0
    seed: int | None = 0
    rpc: RpcTracker | None = None  # measure on devices behind a TVM RPC tracker instead of this machine
    max_minutes: float | None = None  # stop after the batch that passes this much time (records kept)


@dataclass
class TuneProgress:
    """What a progress callback sees after each measured batch."""

    trials_done: int
    trials_total: int
    tasks_done: int
    tasks_total: int
    best_ms: dict[str, float] = field(default_factory=dict)  # per kernel
    errors: int = 0
    elapsed_s: float = 0.0
    out_of_time: bool = False  # the time budget ran out before the trials did
    interrupted: bool = False  # Ctrl-C (SIGINT) asked to stop after the batch being measured

    @property
    def eta_s(self) -> float | None:
        if not self.trials_done:
            return None
        return self.elapsed_s / self.trials_done * max(self.trials_total - self.trials_done, 0)

    def line(self) -> str:
        eta = f", ~{self.eta_s:.0f} s left" if self.eta_s is not None else ""
        best = sum(self.best_ms.values())
        return (f"{self.trials_done}/{self.trials_total} trials, {self.tasks_done}/{self.tasks_total} kernels measured, "
                f"sum of best kernel times {best:.3f} ms, {self.errors} failed{eta}")


def tune_event(state: TuneProgress) -> ProgressEvent:
    """A tuning batch as the library's progress event: trials done of total, best latency so far in the message."""
    return ProgressEvent("tune", state.line(), state.trials_done, state.trials_total)


def tuning_target(target: TargetSpec, cores: int | None = None):
    """The target MetaSchedule tunes for: the [tvm] table plus the core count it requires
    (`cores`, else this machine's physical cores)."""
    import tvm

    table = dict(target.tvm)
    table.setdefault("num-cores", cores or physical_cores())
    return tvm.target.Target(table)


def _rpc_session(tracker: RpcTracker):
    """A session on a device behind the tracker; one-line errors when the tracker or key does not answer."""
    import socket

    from tvm import rpc

    try:
        socket.create_connection((tracker.host, tracker.port), timeout=10).close()  # TVM itself retries for 60 s
        client = rpc.connect_tracker(tracker.host, tracker.port)
    except Exception as exc:  # noqa: BLE001 - socket and TVM errors alike mean "not reachable"
        raise EdgepackError(f"cannot reach the RPC tracker at {tracker.host}:{tracker.port} ({type(exc).__name__})",
                            "start it with `python -m tvm.exec.rpc_tracker` or check --rpc-tracker") from None
    try:
        return client.request(tracker.key, priority=1, session_timeout=tracker.session_timeout_s, max_retry=2)
    except Exception:  # noqa: BLE001
        raise EdgepackError(f"no device with key '{tracker.key}' is free at the RPC tracker {tracker.host}:{tracker.port}",
                            "start `python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` on the device") from None


def remote_threads(tracker: RpcTracker) -> int:
    """The thread count of the device's TVM runtime (what its measurements use)."""
    session = _rpc_session(tracker)
    return int(session.get_function("runtime.NumThreads")())


def _runner(config: TuneConfig):
    """Where candidates are measured: this machine, or the devices behind the RPC tracker."""
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50)
    if config.rpc is None:
        return ms.runner.LocalRunner(timeout_sec=config.run_timeout_s, evaluator_config=evaluator)
    rpc = ms.runner.RPCConfig(tracker_host=config.rpc.host, tracker_port=config.rpc.port, tracker_key=config.rpc.key,
                              session_timeout_sec=int(config.run_timeout_s))
    return ms.runner.RPCRunner(rpc_config=rpc, evaluator_config=evaluator, max_workers=1)


def physical_cores() -> int:
    """Physical cores of this machine (psutil), else logical CPUs."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def _skip_tensor_intrinsics() -> None:
    """Make `import tvm.s_tir.tensor_intrin` (done by every TuneContext) instant in this process.

    The real import parses the TVMScript of every CUDA/ROCm/Hexagon/ARM/x86 intrinsic: ~90 s here.
    CPU schedule rules for targets without VNNI/dotprod/SME use none of them. The placeholder keeps the
    package path, so `tvm.s_tir.tensor_intrin.x86` and friends still import on demand."""
    import sys
    import types

    import tvm.s_tir

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    placeholder = types.ModuleType(name)
    placeholder.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
    sys.modules[name] = placeholder
    tvm.s_tir.tensor_intrin = placeholder


def _build_kernel(mod, target, _params):
    """MetaSchedule's default build minus its `import tvm.s_tir.tensor_intrin` (80-95 s per worker here)."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return build(mod, target=target)


def _in_process_builder(cxx: str | None = None):
    """Builds candidates in this process: MetaSchedule's LocalBuilder restarts a worker pool for every
    batch, and each worker's `import tvm` costs ~5 s here, more than compiling a small kernel.

    Without `cxx` a candidate is a tar of objects (linked by the local runner); with it, a shared
    library linked here by the target's compiler, which a runtime-only RPC server can load."""
    import tempfile

    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.support import cc
    from tvm.support.tar import tar

    @derived_object
    class _InProcessBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):
            results = []
            for build_input in build_inputs:
                try:
                    module = _build_kernel(build_input.mod, build_input.target, None)
                    suffix = "so" if cxx else tar.output_format
                    path = str(Path(tempfile.mkdtemp(prefix="edgepack-tune-")) / f"kernel.{suffix}")
                    module.export_library(path, fcompile=cc.cross_compiler(cxx) if cxx else tar)
                    results.append(ms.builder.BuilderResult(path, None))
                except Exception as exc:  # noqa: BLE001 - a failed candidate is a result, not an error
                    results.append(ms.builder.BuilderResult(None, f"{type(exc).__name__}: {exc}"))
            return results

    return _InProcessBuilder()


def _seed_with_heuristic(contexts, database, runner, target, builder) -> int:
    """Measure edgepack's heuristic schedule of every kernel and commit it as a record: the database's
    best is then never worse than an untuned build, and the search starts from it. Returns records added."""
    from tvm.s_tir import meta_schedule as ms


    added = 0
    for context in contexts:
        try:
            schedule = heuristic_schedule(context.mod, vector_lanes(target))
        except Exception:  # noqa: BLE001 - the heuristic does not apply: the search starts from scratch
            continue
        built = builder.build([ms.builder.BuilderInput(schedule.mod, target)])[0]
        if built.error_msg:
            continue
        args_info = ms.arg_info.ArgInfo.from_prim_func(context.mod["main"])
        (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args_info)])
        result = future.result()
        if result.error_msg or not result.run_secs:
            continue
        workload = database.commit_workload(context.mod)
        database.commit_tuning_record(ms.database.TuningRecord(schedule.trace, workload, result.run_secs, target, args_info))
        added += 1
    return added


def _searchable(contexts, weights) -> tuple[list, list, dict]:
    """The tasks whose search space MetaSchedule can generate, and `{kernel: why}` for the others.

    TVM 0.27's default CPU rules raise (uncaught, ending the whole run) on some fused kernels, e.g. a
    convolution whose clip epilogue reads scalar `where` blocks (ReLU6 whose bounds stay runtime params;
    edgepack.compiler.compile.embed_scalar_params makes them constants); those kernels keep their heuristic schedule."""

    kept, kept_weights, skipped = [], [], {}
    for context, weight in zip(contexts, weights):
        try:
            context.generate_design_space()
        except Exception as exc:  # noqa: BLE001 - TVM raises ScheduleError and others from its rules
            skipped[context.task_name] = first_line(exc)[:200]
            continue
        kept.append(context)
        kept_weights.append(weight)
    return kept, kept_weights, skipped


class _TimeBudgetSpent(Exception):
    """Raised by the progress callback to end MetaSchedule's loop when the time budget is spent."""


class TuningInterrupted(Exception):
    """Ctrl-C stopped tuning after a measured batch; `record` says what was kept."""

    def __init__(self, record: StageRecord):
        super().__init__(f"tuning interrupted; {record.report.get('new_records', 0)} new records kept")
        self.record = record


class _stop_on_sigint:
    """While tuning: the first SIGINT asks the progress callback to stop after the current batch (raising
    KeyboardInterrupt inside MetaSchedule's C++ loop crashed the process); a second one interrupts at once."""

    def __init__(self, state: TuneProgress):
        self.state = state
        self.previous = None

    def _handle(self, signum, frame):
        import signal

        self.state.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _progress_callback(report: Callable[[TuneProgress], None], total: int, task_names: list[str],
                       started: float, max_seconds: float | None):
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self):
            self.state = TuneProgress(0, total, 0, len(task_names))

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            state = self.state
            state.trials_done += len(measure_candidates)
            name = task_names[task_id]
            for built, ran in zip(builder_results, runner_results):
                if built.error_msg or ran.error_msg or not ran.run_secs:
                    state.errors += 1
                    continue
                ms_value = 1000.0 * sum(float(s) for s in ran.run_secs) / len(ran.run_secs)
                state.best_ms[name] = min(state.best_ms.get(name, math.inf), ms_value)
            state.tasks_done = len(state.best_ms)
            state.elapsed_s = time.perf_counter() - started
            state.out_of_time = max_seconds is not None and state.elapsed_s >= max_seconds
            report(state)
            if state.out_of_time or state.interrupted:  # after the database callback ran: this batch's records are kept
                raise _TimeBudgetSpent()

    return _Progress()


def extract_kernels(model: OnnxModel, target: TargetSpec, cores: int | None = None):
    """The kernels a build of `model` for `target` compiles, as MetaSchedule tasks (deduplicated)."""
    from tvm.s_tir import meta_schedule as ms


    tvm_target = tuning_target(target, cores)
    conv_block = vector_lanes(tvm_target) if CompileConfig().blocked_convs and backend_for(target).blocked_convs else 0
    module, _ = import_relax(model, conv_block=conv_block, int8_dot=dot_feature(target))
    module = lower_to_tir(module, tvm_target)
    tasks = ms.relax_integration.extract_tasks(module, tvm_target)
    return tvm_target, [task for task in tasks if not _hand_written(task)]


def _hand_written(task) -> bool:
    """A kernel written by hand for an instruction (edgepack.compiler.int8_dot): nothing to tune."""
    return any(func.attrs is not None and HAND_WRITTEN in func.attrs
               for mod in task.dispatched for func in mod.functions.values())


def tune_model(model: OnnxModel, target: TargetSpec, config: TuneConfig = TuneConfig(),
               progress: Callable[[TuneProgress], None] = lambda state: None) -> StageRecord:
    """Tune every kernel of `model` for `target`, appending the records to the tuning database.

    Ctrl-C stops it after the batch being measured: the records so far stay in the database and
    `TuningInterrupted` carries the record of what was done."""
    if config.rpc is None and not target.runs_on_this_machine():
        raise EdgepackError(f"target '{target.name}' ({target.arch}) cannot be measured on this machine",
                            "tune through the device's RPC server (--rpc-tracker, --rpc-key) or on the device itself")
    if config.trials < 1:
        raise EdgepackError("--trials must be at least 1", "pass e.g. --trials 64")
    if config.max_minutes is not None and not config.max_minutes > 0:
        raise EdgepackError("--minutes must be more than 0", "pass e.g. --minutes 20")
    import tvm  # noqa: F401 - before the workers fork
    from tvm.s_tir import meta_schedule as ms

    _skip_tensor_intrinsics()

    database_dir = Path(config.database) if config.database else tuning_dir(target)
    started = time.perf_counter()
    cores = remote_threads(config.rpc) if config.rpc else None
    tvm_target, tasks = extract_kernels(model, target, cores)
    tasks = [task for task in tasks if not task.mod.attrs or not task.mod.attrs.get("tirx.is_scheduled", False)]
    if not tasks:
        return StageRecord("tune", _config_json(config, database_dir), {"kernels": 0, "trials": 0})
    threads = int(tvm_target.attrs["num-cores"])
    os.environ["TVM_NUM_THREADS"] = str(threads)  # the runner's workers inherit it
    database = open_database(database_dir)
    before = len(database)
    with _scratch_dir(database_dir) as work_dir:
        # a smaller population keeps the search between rounds short on small budgets
        population = 512 if config.trials >= 512 else 128
        strategy = ms.search_strategy.EvolutionarySearch(population_size=population,
                                                         init_min_unmeasured=min(50, population // 2))
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, work_dir, strategy=strategy, num_threads=threads, seed=config.seed)
        contexts, weights, skipped = _searchable(contexts, weights)
        if not contexts:
            return StageRecord("tune", _config_json(config, database_dir), {"kernels": 0, "trials": 0, "skipped": skipped})
        runner = _runner(config)
        builder = _in_process_builder(target.toolchain.cxx if config.rpc else None)
        seeded = _seed_with_heuristic(contexts, database, runner, tvm_target, builder)
        names = [context.task_name for context in contexts]
        max_seconds = config.max_minutes * 60 if config.max_minutes else None
        curve: list[list[float]] = []  # [trials measured, sum of best kernel times] after each batch

        def record_curve(state: TuneProgress) -> None:
            curve.append([state.trials_done, round(sum(state.best_ms.values()), 4)])
            progress(state)

        callback = _progress_callback(record_curve, config.trials, names, started, max_seconds)
        with _stop_on_sigint(callback.state):
            try:
                ms.tune.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=work_dir,
                    max_trials_global=config.trials,
                    # every kernel gets at least one round before the budget runs out
                    num_trials_per_iter=max(1, min(config.trials_per_iteration, config.trials // len(contexts))),
                    builder=builder,
                    runner=runner,
                    database=database,
                    measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), callback],
                )
            except Exception:  # noqa: BLE001 - MetaSchedule re-raises the callback's exception as its own type
                if not (callback.state.out_of_time or callback.state.interrupted):
                    raise
    state = callback.state
    report = {
        "kernels": len(contexts),
        "skipped": skipped,
        "trials": state.trials_done,
        "failed_trials": state.errors,
        "new_records": len(database) - before,
        "heuristic_records": seeded,
        "best_ms_sum": round(sum(state.best_ms.values()), 4),
        "stopped_by_time_budget": state.out_of_time and not state.interrupted,
        "interrupted": state.interrupted,
        "seconds": round(time.perf_counter() - started, 1),
        "curve": curve,
    }
    if state.trials_done and state.errors == state.trials_done:
        raise EdgepackError(f"all {state.errors} tuning candidates failed to build or run",
                            f"rerun with --debug; MetaSchedule's logs are under {database_dir}/logs")
    record = StageRecord("tune", _config_json(config, database_dir), report)
    if state.interrupted:
        raise TuningInterrupted(record)
    return record


def _config_json(config: TuneConfig, database_dir: Path) -> dict:
    return {"trials": config.trials, "max_minutes": config.max_minutes, "trials_per_iteration": config.trials_per_iteration,
            "database": str(database_dir), "seed": config.seed,
            "measured_on": f"rpc {config.rpc}" if config.rpc else "this machine"}


class _scratch_dir:
    """MetaSchedule's log directory beside the database (kept: it explains failed candidates)."""

    def __init__(self, database_dir: Path):
        self.path = database_dir / "logs"

    def __enter__(self) -> str:
        self.path.mkdir(parents=True, exist_ok=True)
        return str(self.path)

    def __exit__(self, *exc) -> None:
        return None
