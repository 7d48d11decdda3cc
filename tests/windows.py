"""Random left-padded item windows for the model-mechanism tests."""

from __future__ import annotations

import numpy as np
import torch


def random_windows(rng: np.random.Generator, B: int, L: int) -> torch.Tensor:
    """(B, L) windows of 1..L real items from a small catalogue (indices 2..8): many repeats."""
    seq = np.zeros((B, L), np.int64)
    for b in range(B):
        n = rng.integers(1, L + 1)
        seq[b, L - n:] = rng.integers(2, 9, n)
    return torch.as_tensor(seq)
