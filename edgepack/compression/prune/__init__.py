"""Pruning: by weight magnitude or first-order Taylor score; unstructured or whole channels.

    from edgepack.prune import ChannelPrune, Taylor, FineTune, prune
    result = prune("net.py:make_model", ChannelPrune(sparsity=0.5, criterion=Taylor(calib=Path("calib.npz")),
                                                     finetune=FineTune("data.py:train")), out=Path("pruned.onnx"))
    edgepack build net.py:make_model --prune channels --prune-sparsity 50% --train data.py:train

ChannelPrune and WeightPrune are TorchPasses (before export); OnnxWeightPrune is an OnnxPass.
"""

from edgepack.prune.api import PruneResult, prune
from edgepack.prune.config import ChannelPrune, OnnxWeightPrune, WeightPrune, parse_sparsity
from edgepack.prune.criteria import Magnitude, Taylor
from edgepack.prune.finetune import FineTune

__all__ = ["ChannelPrune", "WeightPrune", "OnnxWeightPrune", "Magnitude", "Taylor", "FineTune", "prune", "PruneResult",
           "parse_sparsity"]
