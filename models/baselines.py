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

    def chunk_scorer(self, histories: list[np.ndarray]):
        """(lo, hi) -> the same scores as `score`, for items lo..hi only (1M-item catalogues)."""
        return lambda lo, hi: self.scores[lo:hi].expand(len(histories), -1).clone()


def transition_counts(train_items: list[np.ndarray], n_items: int, lag: int = 1) -> sp.csr_matrix:
    """(n_items x n_items) counts of (item, the item `lag` events later) within each user's training
    events; duplicates summed, indices sorted."""
    long_enough = [s for s in train_items if len(s) > lag]
    prev = np.concatenate([s[:-lag] for s in long_enough]) if long_enough else np.zeros(0, np.int64)
    nxt = np.concatenate([s[lag:] for s in long_enough]) if long_enough else np.zeros(0, np.int64)
    m = sp.csr_matrix((np.ones(len(prev), np.float32), (prev, nxt)), shape=(n_items, n_items))
    m.sum_duplicates()
    m.sort_indices()
    return m


class Markov:
    """P(next | last) from training transitions, backed off to popularity for unseen contexts."""

    def __init__(self, train_items: list[np.ndarray], n_items: int, backoff: float = 1e-3) -> None:
        m = transition_counts(train_items, n_items)
        rows = np.asarray(m.sum(1)).ravel()
        self.trans = sp.diags(1.0 / np.maximum(rows, 1)) @ m
        pop = np.bincount(np.concatenate(train_items), minlength=n_items).astype(np.float32)
        self.pop = torch.as_tensor(pop / pop.sum() * backoff)

    def score(self, histories: list[np.ndarray]) -> torch.Tensor:
        return torch.as_tensor(self._rows(histories).toarray(), dtype=torch.float32) + self.pop

    def chunk_scorer(self, histories: list[np.ndarray]):
        """(lo, hi) -> the same scores as `score`, for items lo..hi only: the transition rows stay
        sparse, so a batch never densifies the whole catalogue."""
        rows = self._rows(histories).tocsc()
        return lambda lo, hi: torch.as_tensor(rows[:, lo:hi].toarray(), dtype=torch.float32) + self.pop[lo:hi]

    def _rows(self, histories: list[np.ndarray]) -> sp.csr_matrix:
        last = np.array([h[-1] if len(h) else 0 for h in histories])
        return self.trans[last]
