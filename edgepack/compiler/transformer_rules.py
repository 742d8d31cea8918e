"""Schedule rules for the kernels of transformer models, applied by the CPU heuristic (edgepack.compiler.schedules).

- **Padded matmuls**: the heuristic register-tiles a reduction by splitting its output axes into factors that divide
  them. A ViT has 197 tokens (a prime), so its attention matmuls (Q K^T: 3x197x197, A V) and every projection
  (197 rows) got no tile at all and ran one scalar multiply-add per loaded element (Q K^T: 0.6 GFLOP/s).
  `pad_matmul_axes` pads such an einsum's output axes (`s_tir.Schedule.pad_einsum`: zero-filled copies of the
  operands, the result cropped when written back) so the tile divides them: 197 -> 200. The copies are cheap
  next to the reduction (197x64 operands against 197x197x64 multiply-adds). The epilogue of a padded block stays
  its own loop nest (`same_domain`): inlined into the padded write-back it would write the padding rows out of
  bounds (TVM drops the crop's bound when it reverse-inlines it).
"""

from __future__ import annotations

#: output axes at least this long are padded when no divisor makes a useful tile
PAD_MIN_EXTENT = 16
#: row tiles below this many rows leave most vector registers idle
MIN_ROW_TILE = 4


def _static_extent(dom) -> int:
    extent = dom.extent
    return int(extent) if hasattr(extent, "value") or isinstance(extent, int) else -1


def divisor_at_most(extent: int, limit: int) -> int:
    """The largest factor of `extent` that is at most `limit` (1 when none is larger)."""
    for factor in range(min(extent, limit), 0, -1):
        if extent % factor == 0:
            return factor
    return 1


def matmul_padding(iter_extents: list[tuple[int, bool]], lanes: int) -> list[int] | None:
    """Padding factors for `pad_einsum` (1 = unchanged), or None when every axis already tiles.

    `iter_extents`: per block iterator, (static extent or -1, is spatial). The innermost spatial axis, held in SIMD
    lanes, is padded to a multiple of `lanes`; any other spatial axis of PAD_MIN_EXTENT or more whose largest divisor
    up to 2 * lanes is below MIN_ROW_TILE, to a multiple of `lanes` too (197 -> 200: tiles of 4 or 8 rows).
    Reduction axes and symbolic extents stay as they are."""
    spatial = [i for i, (extent, is_spatial) in enumerate(iter_extents) if is_spatial and extent > 0]
    if not spatial:
        return None
    padding = [1] * len(iter_extents)
    innermost = spatial[-1]
    for index in spatial:
        extent = iter_extents[index][0]
        if extent < PAD_MIN_EXTENT:
            continue
        if index == innermost:
            if extent % lanes:
                padding[index] = lanes
        elif divisor_at_most(extent, 2 * lanes) < MIN_ROW_TILE:
            padding[index] = lanes
    return padding if any(p > 1 for p in padding) else None


def pad_matmul_axes(sch, lanes: int) -> list[str]:
    """Pad the output axes of einsum-shaped reductions (matmuls, batched matmuls) whose extents no useful tile divides;
    returns the names of the blocks padded. Other reductions (convolutions, pooling, norms) are left as they are."""
    padded = []
    root = sch.get_sblock("root")
    for block in sch.get_child_blocks(root):
        block_obj = sch.get(block)
        iter_vars = block_obj.iter_vars
        if not any(int(iv.iter_type) == 2 for iv in iter_vars) or len(block_obj.reads) < 2:
            continue
        padding = matmul_padding([(_static_extent(iv.dom), int(iv.iter_type) == 0) for iv in iter_vars], lanes)
        if padding is None:
            continue
        name = block_obj.name_hint
        try:
            sch.pad_einsum(block, padding)
        except Exception:  # noqa: BLE001 - not an einsum (composite indices, e.g. a convolution): leave it
            continue
        padded.append(name)
    return padded


def same_domain(sch, producer, consumer) -> bool:
    """Whether two blocks iterate over the same extents, so the consumer may be inlined into the producer's loops."""
    extents = [[_static_extent(iv.dom) for iv in sch.get(block).iter_vars] for block in (producer, consumer)]
    return extents[0] == extents[1]
