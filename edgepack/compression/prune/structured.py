"""Structured channel pruning: remove whole conv filters / linear neurons and rewire every consumer.

Torch-Pruning's DependencyGraph finds what must change together (conv → BatchNorm → next conv's input
channels, every member of a residual add, a linear head's inputs after flatten, which are channel ×
spatial positions); edgepack chooses the channels with its own criteria and thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepack.errors import EdgepackError


def _scatter_mean(contributions, size: int):
    import torch

    total, count = torch.zeros(size), torch.zeros(size)
    for values, root_idxs in contributions:
        index = torch.tensor(root_idxs, dtype=torch.long)
        total.scatter_add_(0, index, values.float())
        count.scatter_add_(0, index, torch.ones_like(values, dtype=torch.float32))
    return total / count.clamp(min=1)


def group_scores(group, scores: dict) -> "object | None":
    """Score of each channel of a dependency group: the mean over its layers of the channel's summed element scores."""
    from torch_pruning.pruner import function as fn

    contributions = []
    for index, (dep, idxs) in enumerate(group):
        layer, handler = dep.target.module, dep.handler
        root_idxs = group[index].root_idxs
        score = scores.get(layer)
        if score is None or any(r is None for r in root_idxs):
            continue
        if handler in (fn.prune_conv_out_channels, fn.prune_linear_out_channels):
            if getattr(layer, "transposed", False):
                score = score.transpose(0, 1)
            local = score[idxs].flatten(1).sum(1)
        elif handler in (fn.prune_conv_in_channels, fn.prune_linear_in_channels):
            if getattr(layer, "groups", 1) != 1:
                continue  # grouped convolutions: their output side scores the channel
            local = (score if getattr(layer, "transposed", False) else score.transpose(0, 1)).flatten(1).sum(1)[idxs]
        elif handler == fn.prune_batchnorm_out_channels:
            local = score[idxs]
        else:
            continue
        contributions.append((local, root_idxs))
    if not contributions:
        return None
    size = len(group[0].idxs)
    return _scatter_mean(contributions, size)


@dataclass
class _Candidate:
    root: object  # the module whose output channels define the group
    handler: object
    members: list[str]  # qualified names of the layers whose out channels the group removes
    scores: np.ndarray


def output_layers(module, example_inputs) -> set:
    """Layers whose output is returned by the model: their channels are the model's outputs."""
    import torch

    produced: dict[int, object] = {}
    hooks = [layer.register_forward_hook(lambda layer, _in, out: produced.__setitem__(id(out), layer))
             for layer in module.modules() if not list(layer.children())]
    try:
        with torch.no_grad():
            result = module(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    outputs = result if isinstance(result, (tuple, list)) else (result,)
    return {produced[id(out)] for out in outputs if id(out) in produced}


def choose_channels(candidates: list[_Candidate], sparsity: float | None, threshold: float | None, scope: str) -> list[np.ndarray]:
    """Indices to remove per group: the lowest `sparsity` share (per layer or globally on mean-normalised
    scores) or the channels whose mean-normalised score is ≤ `threshold`; at least one channel stays."""
    normalised = [c.scores / max(float(np.mean(c.scores)), 1e-30) for c in candidates]
    chosen = []
    if threshold is not None:
        chosen = [np.flatnonzero(n <= threshold) for n in normalised]
    elif scope == "global":
        everything = np.concatenate(normalised)
        count = int(np.floor(sparsity * len(everything)))
        cut = np.sort(everything)[count - 1] if count > 0 else -np.inf
        chosen = [np.flatnonzero(n <= cut) for n in normalised]
    else:
        for n in normalised:
            count = int(np.floor(sparsity * len(n)))
            chosen.append(np.argsort(n, kind="stable")[:count])
    result = []
    for n, remove in zip(normalised, chosen):
        if len(remove) >= len(n):  # keep the best channel of a layer
            remove = np.setdiff1d(remove, [int(np.argmax(n))])
        result.append(np.sort(remove))
    return result


def prune_channels(module, example_inputs, scores: dict, sparsity: float | None, threshold: float | None,
                   scope: str, ignored: set = frozenset()) -> dict:
    """Remove channels in place; returns {layer name: {"groups": members, "removed": n, "kept": n}} per group root."""
    import torch
    import torch_pruning as tp

    names = {layer: name for name, layer in module.named_modules()}
    fixed = set(ignored) | output_layers(module, example_inputs)
    with torch.enable_grad():
        try:
            graph = tp.DependencyGraph().build_dependency(module, example_inputs=example_inputs)
        except Exception as exc:  # tracing raises many types for unusual models
            raise EdgepackError(f"cannot trace the model's channel dependencies: {type(exc).__name__}: {exc}",
                                "use unstructured pruning (--granularity weights) for this model") from None
    candidates = []
    for group in graph.get_all_groups(ignored_layers=list(fixed), root_module_types=(torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear)):
        channel_scores = group_scores(group, scores)
        if channel_scores is None:
            continue
        members = [names.get(dep.target.module, "?") for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)
                   and isinstance(dep.target.module, (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear))]
        candidates.append(_Candidate(group[0].dep.target.module, group[0].dep.handler, members, channel_scores.numpy()))
    if not candidates:
        raise EdgepackError("the model has no conv/linear channels that can be removed", "use unstructured pruning (--granularity weights)")
    report = {}
    for candidate, remove in zip(candidates, choose_channels(candidates, sparsity, threshold, scope)):
        report[names[candidate.root]] = {"members": candidate.members, "channels": len(candidate.scores),
                                         "removed": int(len(remove)), "kept": int(len(candidate.scores) - len(remove))}
        if len(remove):
            group = graph.get_pruning_group(candidate.root, candidate.handler, [int(i) for i in remove])
            if graph.check_pruning_group(group):
                group.prune()
            else:
                report[names[candidate.root]].update(removed=0, kept=len(candidate.scores), skipped="torch-pruning refused the group")
    report.update({names[layer]: {"members": [names[layer]], "skipped": "produces the model's output"} for layer in fixed if layer in names})
    return report
