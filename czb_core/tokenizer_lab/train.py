"""Training one tokenizer with one seed, and the metrics it is judged by.

Recipe (the reference's defaults): AdamW (lr 2e-3, weight decay 0.1, betas 0.9/0.95), linear warm-up
over the first 10% of steps then cosine decay to zero, batches of 32, gradient norm clipped at 1.0, up
to 50 epochs with early stopping after 5 epochs without a better validation MCC; the test split is
scored with the weights of the best validation epoch. The cancel token is checked between batches;
`on_epoch` receives each epoch's point of the learning curve as it is made (a job shows the validation
MCC while it trains).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.tokenizer_lab.model import ModelShape, TokenizedClassifier
from czb_core.tokenizer_lab.sentences import SentenceMaker

EVAL_BATCH = 128


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_fraction: float = 0.1
    patience: int = 5
    clip_norm: float = 1.0
    shape: ModelShape = field(default_factory=ModelShape)

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch size and patience must be at least 1")
        if not self.lr > 0:
            raise ValueError(f"the learning rate must be positive, got {self.lr}")


def confusion_matrix(true_n: np.ndarray, pred_n: np.ndarray, n_classes: int) -> np.ndarray:
    """counts_cc[i, j] = cells of true class i predicted as j."""
    counts_cc = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts_cc, (true_n, pred_n), 1)
    return counts_cc


def mcc_from_confusion(counts_cc: np.ndarray) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K); 0 when either marginal is constant."""
    s = counts_cc.sum()
    c = np.trace(counts_cc)
    t_k, p_k = counts_cc.sum(axis=1).astype(float), counts_cc.sum(axis=0).astype(float)
    denominator = math.sqrt((s**2 - (p_k**2).sum()) * (s**2 - (t_k**2).sum()))
    return 0.0 if denominator == 0 else float((c * s - (t_k * p_k).sum()) / denominator)


def cosine_with_warmup(total_steps: int, warmup_fraction: float):
    """lr multiplier at step s: linear rise over the warm-up, then half a cosine down to zero."""
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class RunResult:
    tokenizer: str
    seed: int
    test_accuracy: float
    test_mcc: float
    best_val_mcc: float
    best_epoch: int
    epochs_run: int
    seconds: float
    confusion_cc: np.ndarray
    curve: list[dict]
    state_dict: dict


def _tensors(maker: SentenceMaker, rows: np.ndarray, rng: np.random.Generator, device: str):
    genes_bl, values_bl, special_bl = maker.batch(rows, rng)
    return (torch.from_numpy(genes_bl).to(device), torch.from_numpy(values_bl).to(device),
            torch.from_numpy(special_bl).to(device))


@torch.no_grad()
def predict(model: TokenizedClassifier, maker: SentenceMaker, rows: np.ndarray, seed: int, device: str,
            cancel: Optional[CancelToken] = None) -> np.ndarray:
    """Predicted classes of `rows`, with sentences drawn from a generator fixed by `seed`."""
    model.eval()
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, len(rows), EVAL_BATCH):
        if cancel is not None:
            cancel.check()
        logits = model(*_tensors(maker, rows[start : start + EVAL_BATCH], rng, device))
        out.append(logits.argmax(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def train_run(build_model, maker: SentenceMaker, labels_n: np.ndarray, n_classes: int,
              splits: dict[str, np.ndarray], config: TrainConfig, seed: int, name: str = "run",
              progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None,
              device: str = "cpu", on_epoch: Optional[Callable[[dict], None]] = None) -> RunResult:
    """Train `build_model()` (called after seeding) on splits['train'], early-stop on splits['val'],
    score splits['test']. `labels_n` holds class codes for every row of the maker's matrix."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model().to(device)
    train_rows = splits["train"]
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay, betas=config.betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(steps_per_epoch * config.epochs, config.warmup_fraction))
    labels_t = torch.from_numpy(labels_n.astype(np.int64))
    step = f"{name} seed {seed}"
    progress(step, 0, config.epochs)
    best: tuple[float, int, Optional[dict]] = (-2.0, 0, None)  # validation MCC, epoch, weights
    curve, epoch = [], 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = rng.permutation(train_rows)
        losses = []
        for start in range(0, len(order), config.batch_size):
            if cancel is not None:
                cancel.check()
            rows = order[start : start + config.batch_size]
            logits = model(*_tensors(maker, rows, rng, device))
            loss = F.cross_entropy(logits, labels_t[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        pred_n = predict(model, maker, splits["val"], seed + 1, device, cancel)
        counts_cc = confusion_matrix(labels_n[splits["val"]], pred_n, n_classes)
        val_mcc = mcc_from_confusion(counts_cc)
        curve.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                      "val_accuracy": float(np.trace(counts_cc) / max(1, counts_cc.sum())), "val_mcc": val_mcc})
        if on_epoch is not None:
            on_epoch(curve[-1])
        progress(f"{step}: val MCC {val_mcc:.3f}", epoch, config.epochs)
        if val_mcc > best[0]:
            best = (val_mcc, epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= config.patience:
            break
    model.load_state_dict(best[2])
    pred_n = predict(model, maker, splits["test"], seed + 2, device, cancel)
    counts_cc = confusion_matrix(labels_n[splits["test"]], pred_n, n_classes)
    return RunResult(name, seed, float(np.trace(counts_cc) / max(1, counts_cc.sum())), mcc_from_confusion(counts_cc),
                     best[0], best[1], epoch, time.perf_counter() - t0, counts_cc, curve,
                     {k: v.detach().cpu() for k, v in best[2].items()})

