"""Untuned CPU schedules: a deterministic heuristic that every TIR function gets unless tuned.

TVM's default CPU pipeline lowers every operator to naive, single-threaded loops (ResNet-18 ~70x slower
than ONNX Runtime here), and `dlight.cpu` has no rule for convolutions. This pass gives each function
the shape of a hand-written CPU kernel without any search:

- injective producers are inlined into their (non-reduction) consumers;
- every reduction block (conv2d, matmul, pooling) is register-tiled: the innermost output axis split
  into one or two SIMD vectors, a second output axis into a few rows, accumulators held in a small
  local buffer, the fused epilogue (bias, residual add, ReLU) applied when the tile is written back,
  and the outer tiles spread over the thread pool;
- the remaining element-wise loops are fused, parallelised and vectorised.

A function it cannot schedule is left as it was and named in the report; it still runs, slowly.
Functions that carry tuning records (`tirx.is_scheduled`) are not touched.
"""

from __future__ import annotations

from edgepack.compiler.transformer_rules import divisor_at_most, pad_matmul_axes, same_domain
from edgepack.errors import first_line

from dataclasses import dataclass, field

#: below this many scalar operations a loop nest stays single-threaded: waking the pool costs more
PARALLEL_MIN_WORK = 1 << 15
#: accumulator tile (vector lanes x rows) a reduction keeps in registers; 16 ymm registers on AVX2
TILE_ELEMENTS = 64
#: vector registers the accumulator tile may use when vectorised along a weight's contiguous axis
#: (two are left for the weight vector and the broadcast input)
TILE_VECTORS = 14
#: PrimFunc attribute of kernels written vectorised by hand (int8_dot, llm.kernels): neither scheduled nor tuned
HAND_WRITTEN = "edgepack.hand_written"


@dataclass
class ScheduleReport:
    """Which functions the heuristic scheduled, which it skipped (already tuned, or written vectorised by hand:
    `edgepack.hand_written`) and why some failed."""

    scheduled: list[str] = field(default_factory=list)
    tuned: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    hand_written: list[str] = field(default_factory=list)  # kernels marked HAND_WRITTEN (int8_dot, llm.kernels)

    def to_json(self) -> dict:
        return {"heuristic": len(self.scheduled), "tuned": len(self.tuned), "unscheduled": dict(self.failed),
                **({"hand_written": len(self.hand_written)} if self.hand_written else {})}


def _extent(sch, loop) -> int:
    value = sch.get(loop).extent
    return int(value) if hasattr(value, "value") or isinstance(value, int) else -1


def _vector_factor(extent: int, lanes: int) -> int:
    """Lanes of the innermost output tile: two vectors, one vector, else the largest divisor up to two vectors."""
    for factor in (2 * lanes, lanes):
        if extent % factor == 0:
            return factor
    return divisor_at_most(extent, 2 * lanes)


def _is_reduction(sch, block) -> bool:
    return any(int(iv.iter_type) == 2 for iv in sch.get(block).iter_vars)


def _is_spatial(sch, block) -> bool:
    return all(int(iv.iter_type) == 0 for iv in sch.get(block).iter_vars)


def _work(sch, loops) -> int:
    total = 1
    for loop in loops:
        total *= max(_extent(sch, loop), 1)
    return total


def _inline_injective(sch) -> None:
    """Inline spatial producers into their consumers, except into reductions (pads stay materialised)."""
    changed = True
    while changed:
        changed = False
        root = sch.get_sblock("root") if _has_root(sch) else None
        blocks = sch.get_child_blocks(root) if root is not None else []
        outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)} if root is not None else set()
        for block in blocks:
            if sch.get(block).name_hint in outputs or not _is_spatial(sch, block):
                continue
            consumers = sch.get_consumers(block)
            if not consumers or any(_is_reduction(sch, c) for c in consumers):
                continue
            try:
                sch.compute_inline(block)
            except Exception:  # noqa: BLE001 - not inlinable (e.g. multiple writes): keep it
                continue
            changed = True
            break


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False


def _expr_vars(expr) -> list:
    from tvm.tirx.analysis import undefined_vars

    return list(undefined_vars(expr))


def _weight_axis(sch, block, extents: list[int], lanes: int) -> int | None:
    """The output axis along which a weight-like operand is contiguous: the innermost index of a read
    buffer that does not vary with some other output axis (a conv weight in IHWO layout, a matmul's
    [K, N] weight). Vectorising along it loads the weight as vectors and broadcasts the input."""
    block_obj = sch.get(block)
    spatial = [iv.var for iv in block_obj.iter_vars if int(iv.iter_type) == 0]
    best = None
    for region in block_obj.reads:
        if not region.region:
            continue
        inner = region.region[-1].min
        index = next((i for i, var in enumerate(spatial) if inner.same_as(var)), None)
        if index is None or extents[index] % lanes:
            continue
        used = [var for dim in region.region for var in _expr_vars(dim.min)]
        broadcast = any(extents[i] > 1 and not any(var.same_as(u) for u in used) for i, var in enumerate(spatial) if i != index)
        if broadcast and (best is None or extents[index] > extents[best]):
            best = index
    return best


def _vector_index(sch, block, extents: list[int], lanes: int) -> int:
    """The output axis held in SIMD lanes: a weight's contiguous axis when there is one, else the innermost."""
    weight_axis = _weight_axis(sch, block, extents, lanes)
    if weight_axis is not None:
        return weight_axis
    return max((i for i, e in enumerate(extents) if e > 1), default=len(extents) - 1)


def _tile_reduction(sch, block, lanes: int) -> set[str]:
    """Register-tile one reduction block and write its epilogue back tile by tile; returns the names of the
    blocks in the tile (write-back, init), which are scheduled here and must not be rescheduled as spatial."""
    loops = sch.get_loops(block)
    iter_vars = sch.get(block).iter_vars
    if len(loops) != len(iter_vars):
        raise ValueError("loops do not map one to one onto block iterators")
    spatial = [loop for loop, iv in zip(loops, iter_vars) if int(iv.iter_type) == 0]
    reduce = [loop for loop, iv in zip(loops, iter_vars) if int(iv.iter_type) == 2]
    if not spatial or len(spatial) + len(reduce) != len(loops):
        raise ValueError("unsupported iterator kinds")
    extents = [_extent(sch, loop) for loop in spatial]
    if max(extents) < 1:
        raise ValueError("dynamic shape")
    # a symbolic axis (a dynamic batch) stays a serial loop outside the tile nest, which is then the static one
    symbolic = [loop for loop, extent in zip(spatial, extents) if extent < 1]
    extents = [max(extent, 1) for extent in extents]
    # epilogue (bias, residual, activation) follows the accumulator tile, not the whole tensor
    write_back = sch.cache_write(block, 0, "local")
    accumulate, write_back = block, write_back
    # after cache_write the compute block writes local memory; the copy block writes the old buffer
    for consumer in sch.get_consumers(write_back):
        if _is_spatial(sch, consumer) and same_domain(sch, write_back, consumer):
            try:
                sch.reverse_compute_inline(consumer)
            except Exception:  # noqa: BLE001 - keep the epilogue as its own loop nest
                pass
    if lanes >= 16 and _weight_axis(sch, block, extents, lanes) is None and _weight_axis(sch, block, extents, lanes // 2) is not None:
        # a weight in 8s, not 16s (24, 40 channels: NCHW8c or IHWO; a 1000-class head): the AVX2 tile on ymm, 14 rows,
        # instead of an untiled-weight fallback (EfficientNet-B0 NCHW at x86-64-v4 ~13% faster, MobileNetV2 8c ~5%)
        lanes //= 2
    vec_index = _vector_index(sch, block, extents, lanes)
    if lanes >= 16:  # AVX2 schedules stay as measured (ResNet-18 end to end: no gain there, within noise)
        _vector_axis_innermost(sch, block, vec_index)
    vec_factor = _vector_factor(extents[vec_index], lanes)
    others = [i for i, e in enumerate(extents) if i != vec_index and e > 1]
    row_index = max(others, key=lambda i: (extents[i], i)) if others else None
    budget = TILE_VECTORS * lanes if vec_index == _weight_axis(sch, block, extents, lanes) else TILE_ELEMENTS
    row_factor = divisor_at_most(extents[row_index], max(budget // vec_factor, 1)) if row_index is not None else 1
    outer, inner = [], []
    for index, loop in enumerate(spatial):
        if index == vec_index and vec_factor > 1:
            o, i = sch.split(loop, [None, vec_factor])
            outer.append(o)
            inner.append(i)
        elif index == row_index and row_factor > 1:
            o, i = sch.split(loop, [None, row_factor])
            outer.append(o)
            inner.insert(0, i)
        elif loop not in symbolic:
            outer.append(loop)
    if not outer:
        raise ValueError("dynamic shape")
    sch.reorder(*symbolic, *outer, *reduce, *inner)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    work = _work(sch, [fused, *reduce, *inner])
    sch.reverse_compute_at(write_back, fused)
    if work >= PARALLEL_MIN_WORK and _extent(sch, fused) > 1:
        sch.parallel(fused)
    if vec_factor > 1:
        sch.vectorize(inner[-1])
    if len(inner) > 1:
        sch.unroll(inner[0])
    _vectorize_innermost(sch, write_back, below=fused)
    tile = {sch.get(write_back).name_hint}
    if reduce:  # after the annotations: the update block alone is no longer a reduction block
        init = sch.decompose_reduction(accumulate, reduce[0])
        tile.add(sch.get(init).name_hint)
        if int(sch.get(sch.get_loops(init)[-1]).kind) == 0:
            _vectorize_innermost(sch, init, below=fused)
    return tile


def _vector_axis_innermost(sch, block, vec_index: int) -> None:
    """Lay the local accumulator out with the vector axis innermost, so each accumulator is one contiguous vector.

    The accumulator keeps the output's layout otherwise: an NCHW conv vectorised along its channels would step
    through it with the stride of a row, which LLVM keeps in registers for 8 x 14 accumulators (16-lane vectors
    at AVX2) but spills for 16 x 14 (1-3 GFLOP/s at AVX-512)."""
    written = sch.get(block).writes[0]
    spatial = [iv.var for iv in sch.get(block).iter_vars if int(iv.iter_type) == 0]
    indices = [dim.min for dim in written.region]
    if vec_index == len(indices) - 1 or len(indices) != len(spatial) or not all(i.same_as(v) for i, v in zip(indices, spatial)):
        return  # already innermost, or the buffer's axes are not the block's spatial axes in order
    sch.transform_layout(block, ("write", 0), lambda *axes: [*axes[:vec_index], *axes[vec_index + 1:], axes[vec_index]])


def _vectorize_innermost(sch, block, below=None) -> None:
    """Vectorize the block's innermost loop when it is short; with `below`, only a loop nested inside that one.

    A tile's write-back and init blocks sit in the outer tile loop `below` together with the reduction. When
    the tile has no inner loops (no vector or row factor divides the extents, e.g. a batch-1 matmul with 17
    outputs), their innermost loop is that outer loop itself, and vectorizing it vectorizes the reduction
    around an accumulator that TVM compacts to one element per iteration: all lanes add into one scalar."""
    loops = sch.get_loops(block)
    if not loops or (below is not None and sch.get(loops[-1]).same_as(sch.get(below))):
        return
    if 1 < _extent(sch, loops[-1]) <= 64:
        sch.vectorize(loops[-1])


def _schedule_spatial(sch, block, lanes: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    work = _work(sch, loops)
    last = loops[-1]
    extent = _extent(sch, last)
    if extent < 1:
        raise ValueError("dynamic shape")
    vector = None
    if extent > 1:
        factor = extent if extent <= 4 * lanes else divisor_at_most(extent, 4 * lanes)
        if factor > 1:
            if factor < extent:
                last, vector = sch.split(last, [None, factor])
                loops = [*loops[:-1], last]
            else:
                vector, loops = last, loops[:-1]
    if loops:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        if work >= PARALLEL_MIN_WORK and _extent(sch, fused) > 1:
            sch.parallel(fused)
    if vector is not None:
        sch.vectorize(vector)


def schedule_function(func, lanes: int = 8):
    """The scheduled version of one PrimFunc (raises when the heuristic does not apply)."""
    return heuristic_schedule(func, lanes).mod["main"].with_attr("tirx.is_scheduled", True)


def heuristic_schedule(func, lanes: int = 8):
    """The traced `s_tir.Schedule` of the heuristic for one PrimFunc (or an IRModule holding `main`);
    its trace replays like a tuning record (edgepack.compiler.tune seeds the database with it)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    _inline_injective(sch)
    if pad_matmul_axes(sch, lanes):  # 197 tokens: no tile divides them (edgepack.compiler.transformer_rules)
        _inline_injective(sch)
    root = sch.get_sblock("root")
    reductions = [sch.get(b).name_hint for b in sch.get_child_blocks(root) if _is_reduction(sch, b)]
    tiled: set[str] = set()
    for name in reductions:  # by name: tiling one block inlines others' epilogues
        tiled |= _tile_reduction(sch, sch.get_sblock(name), lanes)
    for block in sch.get_child_blocks(root):
        if sch.get(block).name_hint in tiled:  # its loops enclose the reduction too: nothing to fuse or vectorize
            continue
        if _is_spatial(sch, block) and len(sch.get_loops(block)) and not _is_annotated(sch, block):
            _schedule_spatial(sch, block, lanes)
    return sch


def _is_annotated(sch, block) -> bool:
    from tvm import tirx

    return any(int(sch.get(loop).kind) != int(tirx.ForKind.SERIAL) for loop in sch.get_loops(block))


def vector_lanes(target) -> int:
    """fp32 lanes of the target's widest SIMD registers (8 for AVX2, 16 for AVX-512, 4 for NEON/SSE)."""
    mcpu = str(target.attrs.get("mcpu", "")) if "mcpu" in target.attrs else ""
    mattr = [str(item) for item in target.attrs.get("mattr", [])] if "mattr" in target.attrs else []
    if "+avx512f" in mattr or mcpu in ("x86-64-v4", "skylake-avx512", "cascadelake", "icelake-server", "sapphirerapids", "znver4"):
        return 16
    if str(target.attrs.get("mtriple", "")).startswith("x86_64") and (mcpu in ("x86-64-v3", "haswell", "znver2", "znver3", "skylake") or "+avx2" in mattr):
        return 8
    return 4


def cpu_schedule_pass(report: ScheduleReport, lanes: int):
    """A module pass scheduling every unscheduled PrimFunc with the heuristic; fills `report`."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="EdgepackCpuSchedule")
    def _pass(mod, _ctx):
        updates = {}
        for gvar, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and HAND_WRITTEN in func.attrs:
                report.hand_written.append(gvar.name_hint)
                continue
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs and bool(func.attrs["tirx.is_scheduled"]):
                report.tuned.append(gvar.name_hint)
                continue
            try:
                updates[gvar] = schedule_function(func, lanes)
                report.scheduled.append(gvar.name_hint)
            except Exception as exc:  # noqa: BLE001 - the naive loops still compute the right thing
                report.failed[gvar.name_hint] = f"{type(exc).__name__}: {first_line(exc)}"[:200]
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return _pass
