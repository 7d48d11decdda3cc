"""Tensors for training and evaluation from per-user sequences (numpy in, torch out).

Training uses only each user's training events (the first n_train); every position of a window is
a training example at once (causal). Each evaluation target's input is every event of the user
before it: for the validation target that is the training events, for the test target the training
events and whatever came between (seqrec/splits.py: the protocol decides where the targets are).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Sequences:
    user: np.ndarray          # (U,) user index
    items: list[np.ndarray]
    etypes: list[np.ndarray]
    gaps: list[np.ndarray]
    engage: list[np.ndarray]  # per-event engagement label (0/1)
    n_train: np.ndarray
    valid_pos: np.ndarray     # (U,) position of the validation target, -1 where none
    test_pos: np.ndarray      # (U,) position of the test target, -1 where none

    def train_items(self) -> list[np.ndarray]:
        return [s[:n] for s, n in zip(self.items, self.n_train)]


def left_pad(rows: list[np.ndarray], L: int, dtype=np.int64) -> np.ndarray:
    out = np.zeros((len(rows), L), dtype)
    for i, r in enumerate(rows):
        r = r[-L:]
        if len(r):
            out[i, L - len(r):] = r
    return out


def training_windows(seqs: Sequences, L: int, stride: int | None = None) -> dict[str, torch.Tensor]:
    """Cut each user's training events into windows of L+1 events from the end, `stride` apart.

    With stride < L windows overlap: each window trains only its last `stride` targets, which see
    at least L - stride events of context, and the earliest window (starting at the first event)
    trains whatever is left. Every target is trained exactly once."""
    stride = min(stride or L, L)
    cols: dict[str, list] = {k: [] for k in ("seq", "etype", "gap", "target", "engage", "user")}
    for u, items, et, gp, en, n in zip(seqs.user, seqs.items, seqs.etypes, seqs.gaps, seqs.engage, seqs.n_train):
        end = int(n)
        covered_from = end  # item positions >= this are targets of a later window already
        while end >= 2:
            start = max(0, end - L - 1)
            sl = slice(start, end)
            w_items, w_et, w_gp, w_en = items[sl], et[sl], gp[sl], en[sl]
            target = w_items[1:].copy()
            pos = np.arange(start + 1, end)
            own = (pos < covered_from) & ((pos >= end - stride) | (start == 0))
            target[~own] = 0
            cols["seq"].append(w_items[:-1])
            cols["etype"].append(w_et[:-1])
            cols["gap"].append(w_gp[:-1])
            cols["target"].append(target)
            cols["engage"].append(w_en[1:])
            cols["user"].append(u)
            if start == 0:
                break
            covered_from = end - stride
            end = end - stride
    out = {k: torch.as_tensor(left_pad(v, L)) for k, v in cols.items() if k != "user"}
    out["user"] = torch.as_tensor(np.asarray(cols["user"], np.int64))
    return out


def eval_inputs(seqs: Sequences, L: int, split: str) -> dict:
    """Inputs, targets and seen items for the users with a target in this split (validation/test)."""
    pos = seqs.valid_pos if split == "validation" else seqs.test_pos
    keep = np.flatnonzero(pos >= 0)
    end = pos[keep]
    hist = [seqs.items[i][:e] for i, e in zip(keep, end)]
    return {
        "rows": keep,
        "user": torch.as_tensor(seqs.user[keep].astype(np.int64)),
        "seq": torch.as_tensor(left_pad(hist, L)),
        "etype": torch.as_tensor(left_pad([seqs.etypes[i][:e] for i, e in zip(keep, end)], L)),
        "gap": torch.as_tensor(left_pad([seqs.gaps[i][:e] for i, e in zip(keep, end)], L)),
        "target": np.array([seqs.items[i][e] for i, e in zip(keep, end)], np.int64),
        "engage": np.array([seqs.engage[i][e] for i, e in zip(keep, end)], np.int64),
        "seen": [np.unique(h) for h in hist],
        "history": hist,
    }


def eval_slice(ev: dict, lo: int, hi: int) -> dict:
    """Users lo..hi-1 of eval_inputs' output (one rank's share of a sharded evaluation)."""
    return {k: v[lo:hi] for k, v in ev.items()}
