"""Network student: a smaller nn.Module trained on the teacher's softened outputs (Hinton et al. 2015).

loss = α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1−α)·CE(z_s, y); without labels α is 1 (pure
distillation). The teacher's logits are computed once; each epoch ends with an evaluation on a
validation split (never the reported test data) and the best epoch's weights are kept.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from edgepack.errors import EdgepackError, first_line
from edgepack.measure.evaluation import EvalData, top1


@dataclass(frozen=True)
class NetworkStudentConfig:
    """The student architecture (`file.py:factory`) and the distillation hyper-parameters."""

    student: str
    temperature: float = 4.0
    alpha: float | None = None  # None: 0.5 with labels, 1.0 (pure distillation) without
    epochs: int = 30
    lr: float = 1e-2  # Adam, cosine-annealed over the epochs
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1  # training samples held out to choose the best epoch (without --val data)

    kind = "network"

    def check(self) -> None:
        if ".py:" not in self.student:
            raise EdgepackError(f"--student '{self.student}' is not file.py:factory",
                                "pass the student architecture as path/to/file.py:factory (an untrained nn.Module)")
        if self.temperature <= 0:
            raise EdgepackError(f"--temperature {self.temperature} is not positive", "use a temperature such as 4")
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise EdgepackError(f"--alpha {self.alpha} is outside 0..1", "use 1 for pure distillation, 0 for labels only")
        for label, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size)):
            if value < 1:
                raise EdgepackError(f"{label} {value} is below 1", f"pass {label} 1 or more")
        if not 0 <= self.val_fraction < 1:
            raise EdgepackError(f"--val-fraction {self.val_fraction} is outside 0..1", "use e.g. 0.15, or 0 to keep the last epoch")
        if self.lr <= 0:
            raise EdgepackError(f"--lr {self.lr} is not positive", "use a learning rate such as 1e-2")

    def resolved_alpha(self, labelled: bool) -> float:
        """α for this data: given, else 0.5 with labels and 1 without; labels are needed for α < 1."""
        if not labelled:
            if self.alpha is not None and self.alpha < 1:
                raise EdgepackError(f"--alpha {self.alpha} weighs in the labels, but the training data has none",
                                    "add 'labels' to the training .npz, or use --alpha 1 (pure distillation)")
            return 1.0
        return 0.5 if self.alpha is None else self.alpha

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class EpochReport:
    """One epoch: mean training loss, and the student's quality on the evaluation data."""

    epoch: int
    loss: float
    accuracy: float | None = None
    fidelity: float | None = None  # top-1 agreement with the teacher

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainingProgress:
    """Where training is: for progress bars."""

    step: int
    steps: int
    epoch: int
    epochs: int
    loss: float
    last: EpochReport | None = None


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1−α)·CE(z_s, y), averaged over the batch."""
    import torch.nn.functional as F

    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    if alpha >= 1 or labels is None:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def load_student(spec: str):
    """Import and call the student factory (an untrained nn.Module)."""
    from edgepack.frontends.sources import FactorySource, call_factory, parse_source

    source = parse_source(spec)
    if not isinstance(source, FactorySource):
        raise EdgepackError(f"--student '{spec}' is not file.py:factory", "pass path/to/file.py:factory")
    module, _ = call_factory(source)
    return module


def _forward(module, stacks, index=None):
    import torch

    parts = [torch.from_numpy(np.ascontiguousarray(s if index is None else s[index])) for s in stacks]
    result = module(*parts)
    return result[0] if isinstance(result, (tuple, list)) else result


def student_logits(module, stacks: tuple[np.ndarray, ...], batch: int = 256) -> np.ndarray:
    """The student's first output on all samples, in batches, without gradients."""
    import torch

    module.eval()
    with torch.no_grad():
        return np.concatenate([_forward(module, [s[start:start + batch] for s in stacks]).numpy().reshape(min(batch, len(stacks[0]) - start), -1)
                               for start in range(0, len(stacks[0]), batch)]).astype(np.float32)


def train_student(module, train: tuple[np.ndarray, ...], teacher_train: np.ndarray, labels: np.ndarray | None,
                  config: NetworkStudentConfig, alpha: float,
                  evaluate: Callable[[object], EpochReport] | None = None,
                  progress: Callable[[TrainingProgress], None] = lambda state: None):
    """Train `module` in place; returns (best state_dict, history, best epoch).

    The best epoch has the highest evaluation accuracy (fidelity without labels); without an
    evaluation the last epoch is kept."""
    import torch

    torch.manual_seed(config.seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    teacher = torch.from_numpy(teacher_train)
    targets = None if labels is None or alpha >= 1 else torch.from_numpy(labels.astype(np.int64))
    count = len(train[0])
    batches = (count + config.batch_size - 1) // config.batch_size
    history: list[EpochReport] = []
    best_state, best_score, best_epoch = None, -1.0, 0
    for epoch in range(1, config.epochs + 1):
        module.train()
        order = torch.randperm(count).numpy()
        total = 0.0
        for index in range(batches):
            chosen = order[index * config.batch_size:(index + 1) * config.batch_size]
            optimizer.zero_grad()
            try:
                logits = _forward(module, train, chosen)
            except Exception as exc:  # the user's module may raise anything
                raise EdgepackError(f"the student fails on a batch of shape {tuple(train[0][chosen].shape)}: "
                                    f"{type(exc).__name__}: {first_line(exc)}",
                                    "make the student's forward() accept any batch size") from None
            if logits.shape != teacher[chosen].shape:
                raise EdgepackError(f"the student returns {tuple(logits.shape[1:])} per sample, the teacher "
                                    f"{tuple(teacher.shape[1:])}", "give the student one output per teacher class")
            loss = kd_loss(logits, teacher[chosen], None if targets is None else targets[chosen], config.temperature, alpha)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            total += value * len(chosen)
            progress(TrainingProgress((epoch - 1) * batches + index + 1, config.epochs * batches, epoch, config.epochs,
                                      value, history[-1] if history else None))
        schedule.step()
        report = evaluate(module) if evaluate else EpochReport(epoch, 0.0)
        report = EpochReport(epoch, total / count, report.accuracy, report.fidelity)
        history.append(report)
        score = report.accuracy if report.accuracy is not None else report.fidelity
        if score is None or score > best_score:
            best_state, best_score, best_epoch = copy.deepcopy(module.state_dict()), score if score is not None else -1.0, epoch
        progress(TrainingProgress(epoch * batches, config.epochs * batches, epoch, config.epochs, report.loss, report))
    module.load_state_dict(best_state)
    module.eval()
    return module, history, best_epoch


def epoch_evaluator(stacks: tuple[np.ndarray, ...], teacher_logits: np.ndarray, labels: np.ndarray | None):
    """A per-epoch evaluation: accuracy (with labels) and top-1 agreement with the teacher."""
    teacher_top1 = top1(teacher_logits)

    def evaluate(module) -> EpochReport:
        predicted = top1(student_logits(module, stacks))
        accuracy = None if labels is None else float(np.mean(predicted == labels.reshape(-1)))
        return EpochReport(0, 0.0, accuracy, float(np.mean(predicted == teacher_top1)))

    return evaluate


def validation_split(data: EvalData, logits: np.ndarray, fraction: float, seed: int):
    """(train, train logits, validation, validation logits): a seeded random `fraction` of `data` held out."""
    count = len(data)
    held = int(round(count * fraction))
    if held < 1 or held >= count:
        raise EdgepackError(f"--val-fraction {fraction} of {count} training samples leaves no validation or no training sample",
                            "pass more training data, another --val-fraction, or --val data.npz")
    order = np.random.default_rng(seed).permutation(count)
    parts = []
    for chosen, name in ((order[held:], "train"), (order[:held], "validation")):
        labels = None if data.labels is None else data.labels[chosen]
        parts += [EvalData(tuple(stack[chosen] for stack in data.inputs), labels, f"{data.origin} ({name} part)"), logits[chosen]]
    return tuple(parts)
