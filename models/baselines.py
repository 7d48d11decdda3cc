"""Baselines scored by the same evaluation code: popularity and first-order item transitions."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


class Popularity:
    def __init__(self, train_items: list[np.ndarray], n_items: int) -> None:
        counts = np.bincount(np.concatenate(train_items), minlength=n_items).astype(np.float32)
        self.scores = torch.as_tensor(counts)

    def score(self, histories: list[np.ndarray]) -> torch.Tensor:
        return self.scores.expand(len(histories), -1)


class Markov:
    """P(next | last) from training transitions, backed off to popularity for unseen contexts."""

    def __init__(self, train_items: list[np.ndarray], n_items: int, backoff: float = 1e-3) -> None:
        prev = np.concatenate([s[:-1] for s in train_items if len(s) > 1])
        nxt = np.concatenate([s[1:] for s in train_items if len(s) > 1])
        m = sp.csr_matrix((np.ones(len(prev), np.float32), (prev, nxt)), shape=(n_items, n_items))
        rows = np.asarray(m.sum(1)).ravel()
        self.trans = sp.diags(1.0 / np.maximum(rows, 1)) @ m
        pop = np.bincount(np.concatenate(train_items), minlength=n_items).astype(np.float32)
        self.pop = torch.as_tensor(pop / pop.sum() * backoff)

    def score(self, histories: list[np.ndarray]) -> torch.Tensor:
        last = np.array([h[-1] if len(h) else 0 for h in histories])
        return torch.as_tensor(self.trans[last].toarray(), dtype=torch.float32) + self.pop
