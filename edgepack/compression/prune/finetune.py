"""Fine-tuning after pruning: the user's training data, cross-entropy, Adam."""

from __future__ import annotations

from dataclasses import dataclass

from edgepack.errors import EdgepackError
from edgepack.compression.prune.data import training_batches


@dataclass(frozen=True)
class FineTune:
    """`--train file.py:function --epochs N --lr X`: recover accuracy after pruning."""

    train: str  # file.py:function returning (inputs, labels) arrays or yielding batches
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0


def fine_tune(module, config: FineTune, progress=lambda line: None) -> dict:
    """Train `module` in place (pruning masks, when attached, keep pruned weights at zero); returns losses per epoch."""
    import torch

    torch.manual_seed(config.seed)
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=config.lr)
    losses = []
    module.train()
    try:
        for epoch in range(config.epochs):
            total, count = 0.0, 0
            for inputs, labels in training_batches(config.train, config.batch_size, config.seed + epoch):
                optimizer.zero_grad()
                logits = module(*[torch.from_numpy(array) for array in inputs])
                logits = logits[0] if isinstance(logits, (tuple, list)) else logits
                loss = torch.nn.functional.cross_entropy(logits.reshape(len(logits), -1), torch.from_numpy(labels.reshape(-1)).long())
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * len(labels), count + len(labels)
            if count == 0:
                raise EdgepackError(f"--train '{config.train}' gave no samples", "return at least one (inputs, labels) batch")
            losses.append(round(total / count, 5))
            progress(f"fine-tune epoch {epoch + 1}/{config.epochs}: loss {losses[-1]:.4f}")
    except RuntimeError as exc:  # shape or dtype mismatches in the user's data
        raise EdgepackError(f"fine-tuning failed on the --train data: {str(exc).splitlines()[0]}",
                            "return inputs shaped like the model's (samples on axis 0) and integer class labels") from None
    finally:
        module.eval()
    return {"epochs": config.epochs, "lr": config.lr, "batch_size": config.batch_size, "loss_per_epoch": losses}
