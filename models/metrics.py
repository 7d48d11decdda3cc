"""Full-ranking metrics (DESIGN.md section 4), vectorised in torch and batched over users.

rank = number of catalogue items scored strictly higher than the target (items excluded by
`exclude_seen` and the padding/unknown indices never count). HR@K (= Recall@K with one target),
NDCG@K = 1/log2(rank+2), MRR@K = 1/(rank+1), each 0 when rank >= K; coverage@10 over all users.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

KS = (5, 10, 20)


def mask_scores(scores: torch.Tensor, seen: list[np.ndarray] | None, targets: torch.Tensor) -> torch.Tensor:
    """-inf for padding/unknown and (optionally) items the user already interacted with.

    The target itself is never masked, so a repeat interaction is still rankable."""
    scores = scores.clone().float()
    scores[:, :2] = -torch.inf
    if seen is not None:
        rows = np.repeat(np.arange(len(seen)), [len(s) for s in seen])
        cols = np.concatenate(seen) if len(seen) else np.zeros(0, np.int64)
        if len(cols):
            tgt_scores = scores.gather(1, targets[:, None])
            scores[torch.as_tensor(rows), torch.as_tensor(cols, dtype=torch.long)] = -torch.inf
            scores.scatter_(1, targets[:, None], tgt_scores)
    return scores


def ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    tgt = scores.gather(1, targets[:, None])
    return (scores > tgt).sum(1)


def per_user_metrics(rank: torch.Tensor, ks: Iterable[int] = KS) -> dict[str, np.ndarray]:
    r = rank.double()
    out = {}
    for k in ks:
        hit = r < k
        out[f"hr@{k}"] = hit.double().numpy()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).numpy()
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / (r + 1.0), torch.zeros_like(r)).numpy()
    return out


def evaluate_ranking(score_fn: Callable[[np.ndarray], torch.Tensor], n_users: int, targets: np.ndarray,
                     seen: list[np.ndarray] | None, n_items: int, batch_size: int = 512) -> tuple[dict, dict]:
    """score_fn(batch_indices) -> (B, n_items) scores. Returns (mean metrics, per-user arrays)."""
    per: dict[str, list[np.ndarray]] = {}
    top10 = []
    for lo in range(0, n_users, batch_size):
        idx = np.arange(lo, min(n_users, lo + batch_size))
        s = score_fn(idx).float().cpu()
        t = torch.as_tensor(targets[idx], dtype=torch.long)
        s = mask_scores(s, [seen[i] for i in idx] if seen is not None else None, t)
        for k, v in per_user_metrics(ranks(s, t)).items():
            per.setdefault(k, []).append(v)
        top10.append(s.topk(min(10, n_items), dim=1).indices.numpy())
    arrays = {k: np.concatenate(v) for k, v in per.items()}
    means = {k: float(v.mean()) for k, v in arrays.items()}
    means["coverage@10"] = float(len(np.unique(np.concatenate(top10))) / max(1, n_items - 2)) if top10 else 0.0
    means["users"] = int(n_users)
    return means, arrays


def binary_metrics(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    y_true = np.asarray(y_true).astype(int).ravel()
    y_score = np.asarray(y_score).ravel()
    pred = (y_score >= threshold).astype(int)
    out = {"precision": float(precision_score(y_true, pred, zero_division=0)),
           "recall": float(recall_score(y_true, pred, zero_division=0)),
           "f1": float(f1_score(y_true, pred, zero_division=0))}
    out["auc"] = float(roc_auc_score(y_true, y_score)) if 0 < y_true.sum() < len(y_true) else float("nan")
    return out
