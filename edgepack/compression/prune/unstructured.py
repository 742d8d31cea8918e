"""Unstructured pruning: zero single weights of conv/linear layers with torch.nn.utils.prune."""

from __future__ import annotations

from edgepack.compression.prune.criteria import prunable_layers


def prune_weights(module, scores: dict, sparsity: float | None, threshold: float | None, scope: str) -> None:
    """Attach pruning masks (weight = weight_orig * mask) by score; `make_permanent` removes them later."""
    from torch.nn.utils import prune

    layers = list(prunable_layers(module).values())
    if threshold is not None:
        for layer in layers:
            prune.custom_from_mask(layer, "weight", mask=(scores[layer] > threshold).to(layer.weight.dtype))
    elif scope == "global":
        prune.global_unstructured([(layer, "weight") for layer in layers], pruning_method=prune.L1Unstructured,
                                  importance_scores={(layer, "weight"): scores[layer] for layer in layers}, amount=float(sparsity))
    else:
        for layer in layers:
            prune.l1_unstructured(layer, "weight", amount=float(sparsity), importance_scores=scores[layer])


def make_permanent(module) -> None:
    """Fold the masks into the weights (prune.remove) so the exported model holds plain zeroed tensors."""
    import torch
    from torch.nn.utils import prune

    for layer in prunable_layers(module).values():
        if prune.is_pruned(layer) and hasattr(layer, "weight_mask"):
            prune.remove(layer, "weight")
            with torch.no_grad():  # weight_orig * 0 is -0.0 for negative weights: store +0.0 (all-zero bytes)
                layer.weight[layer.weight == 0] = 0.0
