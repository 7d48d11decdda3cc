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
    valid_targets: tuple[np.ndarray, np.ndarray]  # (user row, position) of each validation target
    test_targets: tuple[np.ndarray, np.ndarray]   # the same for the test targets (several per user: temporal)
    attr: np.ndarray | None = None  # (N, A) item attributes: windows then carry a summary of earlier events
                                    # (model.user_history)

    def train_items(self) -> list[np.ndarray]:
        return [s[:n] for s, n in zip(self.items, self.n_train)]


def left_pad(rows: list[np.ndarray], L: int, dtype=np.int64) -> np.ndarray:
    out = np.zeros((len(rows), L), dtype)
    for i, r in enumerate(rows):
        r = r[-L:]
        if len(r):
            out[i, L - len(r):] = r
    return out


def prefix_summary(items: np.ndarray, start: int, attr: np.ndarray) -> tuple[int, np.ndarray]:
    """The events before a window that starts at `start`: their count and attribute sums."""
    return start, attr[items[:start]].sum(0, dtype=np.float32)


def _prefix_sums(items: np.ndarray, attr: np.ndarray) -> np.ndarray:
    """(len + 1, A): row k = attribute sums of the first k events (one pass per user, not per window)."""
    out = np.zeros((len(items) + 1, attr.shape[1]), np.float32)
    np.cumsum(attr[items], axis=0, dtype=np.float32, out=out[1:])
    return out


def training_windows(seqs: Sequences, L: int, stride: int | None = None) -> dict[str, torch.Tensor]:
    """Cut each user's training events into windows of L+1 events from the end, `stride` apart.

    With stride < L windows overlap: each window trains only its last `stride` targets, which see
    at least L - stride events of context, and the earliest window (starting at the first event)
    trains whatever is left. Every target is trained exactly once."""
    stride = min(stride or L, L)
    cols: dict[str, list] = {k: [] for k in ("seq", "etype", "gap", "target", "engage", "user", "pre_n", "pre_attr")}
    for u, items, et, gp, en, n in zip(seqs.user, seqs.items, seqs.etypes, seqs.gaps, seqs.engage, seqs.n_train):
        end = int(n)
        sums = _prefix_sums(items[:end], seqs.attr) if seqs.attr is not None else None
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
            if sums is not None:
                cols["pre_n"].append(start)
                cols["pre_attr"].append(sums[start])
            if start == 0:
                break
            covered_from = end - stride
            end = end - stride
    out = {k: torch.as_tensor(left_pad(v, L)) for k, v in cols.items() if k not in ("user", "pre_n", "pre_attr")}
    out["user"] = torch.as_tensor(np.asarray(cols["user"], np.int64))
    if seqs.attr is not None:
        out.update(_prefix_tensors(cols["pre_n"], cols["pre_attr"], seqs.attr.shape[1]))
    return out


def _prefix_tensors(pre_n: list[int], pre_attr: list[np.ndarray], width: int) -> dict[str, torch.Tensor]:
    return {"pre_n": torch.as_tensor(np.asarray(pre_n, np.int64)),
            "pre_attr": torch.as_tensor(np.stack(pre_attr) if pre_attr else np.zeros((0, width), np.float32))}


def eval_inputs(seqs: Sequences, L: int, split: str) -> dict:
    """Inputs, targets and seen items for each target of this split (validation/test); "rows" holds
    each target's user row (a user with several targets has consecutive rows)."""
    keep, end = seqs.valid_targets if split == "validation" else seqs.test_targets
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
        **(history_prefixes(hist, L, seqs.attr) if seqs.attr is not None else {}),
    }


def history_prefixes(histories: list[np.ndarray], L: int, attr: np.ndarray) -> dict[str, torch.Tensor]:
    """pre_n / pre_attr of histories scored through their last L events (evaluation, serving)."""
    summaries = [prefix_summary(h, max(0, len(h) - L), attr) for h in histories]
    return _prefix_tensors([n for n, _ in summaries], [a for _, a in summaries], attr.shape[1])


def eval_slice(ev: dict, lo: int, hi: int) -> dict:
    """Users lo..hi-1 of eval_inputs' output (one rank's share of a sharded evaluation)."""
    return {k: v[lo:hi] for k, v in ev.items()}
