"""How TVM compiles (a frozen config shared by the compile stage and the backends)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CompileConfig:
    """How TVM compiles: the Relax pipeline, the schedules of the kernels, the tuning records applied."""

    pipeline: str = "default"  # relax.get_default_pipeline(target)'s passes: folds constants and fuses ops
    # kernels without tuning records get edgepack.compiler.schedules' register-tiled, multi-threaded schedules
    # (ResNet-18 here: 2.4 s naive -> ~0.1 s); False keeps TVM's naive single-threaded loops
    cpu_schedule: bool = True
    # MetaSchedule database (edgepack.compiler.tune) whose records replace the heuristic where workloads match;
    # None applies none
    tuning_database: str | None = None
    # QDQ conv2d/matmul run as int8 ops with int32 accumulation + requantize (edgepack.compiler.integer_ops);
    # CPU targets
    integer_ops: bool = True
    # fp32 convolutions in the blocked NCHW[x]c layout, x = the target's vector width, weights packed at build
    # time (edgepack.compiler.conv_layout); CPU targets
    blocked_convs: bool = True
    # channel shuffles (reshape-transpose-reshape) absorbed into the convolutions' weights instead of copied, and
    # convolutions a few channels short of the channel block padded with zero filters (edgepack.compiler.channel_shuffle)
    remove_shuffles: bool = True
    # blocked 3x3 stride-1 convolutions of the shapes where it wins run as Winograd F(4x4, 3x3) (edgepack.compiler.winograd)
    winograd: bool = True
