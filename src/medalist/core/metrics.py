"""Ground floor: the competition metrics, all taking labels and class probabilities."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss

METRICS = ("micro_f1", "macro_f1", "weighted_f1", "accuracy", "log_loss")


def higher_is_better(metric: str) -> bool:
    return metric != "log_loss"


def score(metric: str, y_true, proba: np.ndarray) -> float:
    """Score (n, K) probabilities against integer labels with `metric`."""
    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    if metric == "log_loss":
        p = np.clip(proba, 1e-15, 1.0)
        p = p / p.sum(axis=1, keepdims=True)
        return float(log_loss(y_true, p, labels=list(range(proba.shape[1]))))
    return score_labels(metric, y_true, proba.argmax(axis=1))


def score_labels(metric: str, y_true, y_pred) -> float:
    """Score hard predictions (not defined for log_loss)."""
    if metric == "micro_f1":
        return float(f1_score(y_true, y_pred, average="micro"))
    if metric == "macro_f1":
        return float(f1_score(y_true, y_pred, average="macro"))
    if metric == "weighted_f1":  # per-class F1 weighted by each class's true count
        return float(f1_score(y_true, y_pred, average="weighted"))
    if metric == "accuracy":
        return float(accuracy_score(y_true, y_pred))
    raise ValueError(f"metric {metric!r} needs probabilities or is unknown")


def better(metric: str, a: float, b: float) -> bool:
    """Is score a strictly better than b?"""
    return a > b if higher_is_better(metric) else a < b
