"""Pruning: by weight magnitude or first-order Taylor score; unstructured or whole channels.

    from edgepack.compression.prune import ChannelPrune, Taylor, FineTune, prune
    result = prune("net.py:make_model", ChannelPrune(sparsity=0.5, criterion=Taylor(calib=Path("calib.npz")),
                                                     finetune=FineTune("data.py:train")), out=Path("pruned.onnx"))
    edgepack build net.py:make_model --prune channels --prune-sparsity 50% --train data.py:train

ChannelPrune and WeightPrune are TorchPasses (before export); OnnxWeightPrune is an OnnxPass.
"""

from edgepack.compression.prune.api import PruneResult, prune
from edgepack.compression.prune.config import ChannelPrune, OnnxWeightPrune, WeightPrune, parse_sparsity
from edgepack.compression.prune.criteria import Magnitude, Taylor
from edgepack.compression.prune.finetune import FineTune

__all__ = ["ChannelPrune", "WeightPrune", "OnnxWeightPrune", "Magnitude", "Taylor", "FineTune", "prune", "PruneResult",
           "parse_sparsity"]
