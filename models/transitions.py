"""The transition mixture (model.transition_lags = K > 0): the next-item distribution is a learned
mixture of the network's softmax and, per lag k = 1..K, the empirical distribution of the items that
followed the item k events back in the training events:

    p(item) = w_0 p_net(item) + sum_k w_k c_k(item) / n_k

c_k = how often the item followed the context item at lag k, n_k = all successors of the context
item. The log-weights come from the sequence state (`SeqRecNet.trans_gate`, network first, then one
per lag) plus a learned multiple of log n_k (`SeqRecNet.trans_count_w`: 3 successors out of 3 say
less than 300 out of 300); a lag whose context has no successors gets weight 0.

- `TransitionTables`: the counts, one CSR table per lag (built by tasks/features.py);
- `checked_tables`: the tables a network with K lags may use (an error if they have fewer);
- `transition_pairs`: for some positions, their context items' successors (row, item, lag, c / n);
- `transition_log_weights`: the mixture's log-weights per position;
- `transition_target_log_prob`: log p(target) under the mixture (training);
- `transition_ranker`: log p of items lo..hi-1 under the mixture, in item chunks (ranking).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass
class TransitionTables:
    """Item -> item counts in the training events, one CSR table per lag (lag d + 1: the successor
    d + 1 events later in the same user's sequence). Row = context item, columns = successors."""

    indptr: list[torch.Tensor]   # per lag (N + 1,) long
    indices: list[torch.Tensor]  # per lag (nnz,) long
    counts: list[torch.Tensor]   # per lag (nnz,) float

    def __post_init__(self) -> None:
        # row totals (all successors of a context item), for c / n
        self.totals = [torch.zeros(len(p) - 1, dtype=torch.float32, device=p.device).index_add_(
            0, torch.repeat_interleave(torch.arange(len(p) - 1, device=p.device), p[1:] - p[:-1]), c.float())
            for p, c in zip(self.indptr, self.counts)]
        self._on: dict[str, TransitionTables] = {}

    @property
    def lags(self) -> int:
        return len(self.indptr)

    def on(self, device: torch.device) -> "TransitionTables":
        """These tables on `device` (copied once per device, not once per step)."""
        if device.type == "cpu":
            return self
        key = str(device)
        if key not in self._on:
            moved = copy.copy(self)  # not the constructor: the totals are moved, not recomputed there
            moved.indptr, moved.indices, moved.counts, moved.totals = (
                [t.to(device) for t in ts] for ts in (self.indptr, self.indices, self.counts, self.totals))
            moved._on = {}
            self._on[key] = moved
        return self._on[key]


def checked_tables(tables: TransitionTables | None, lags: int) -> TransitionTables | None:
    """`tables` for a mixture over `lags` lags (None when lags = 0); an error when they have fewer."""
    if not lags:
        return None
    have = tables.lags if tables is not None else 0
    if have < lags:
        raise ValueError(f"model.transition_lags={lags} needs transition tables of that many "
                         f"lags, the views have {have} (views.transition_lags): raise it, or lower "
                         f"model.transition_lags")
    return tables


class TransitionPairs(NamedTuple):
    """Successors of the context items of some positions, one entry per (row, item, lag) with c > 0,
    and the context counts n per (row, lag)."""

    rows: torch.Tensor   # (P,) long: which position (index into the positions asked for)
    item: torch.Tensor   # (P,) long: the successor
    lag: torch.Tensor    # (P,) long: lag index d (lag d + 1)
    p: torch.Tensor      # (P,) float: c / n
    n_ctx: torch.Tensor  # (positions, lags) float: n, 0 where there is no such context item or no successor


def transition_pairs(tables: TransitionTables, lags: int, seq: torch.Tensor, pos: torch.Tensor,
                     target: torch.Tensor | None = None) -> TransitionPairs:
    """For positions pos[row] (flat b * L + l of `seq`) and each lag d + 1 <= `lags`, the training
    successors of the item d events before the position (0 where there is no such context item or
    it has no successors). Leave-one-out in training (`target` given): the counts include the
    position's own transition, which is taken out (c - 1 for the target, n - 1), so the model learns
    how much a count says about an unseen next event, the only kind it will score."""
    t = tables.on(seq.device)
    flat, L = seq.flatten(), seq.shape[1]
    n_ctx = torch.zeros(len(pos), lags, device=seq.device)
    parts = []
    for d in range(lags):
        r = ((pos % L) >= d).nonzero().squeeze(1)
        ctx = flat[pos[r] - d]
        total = t.totals[d][ctx] - (1.0 if target is not None else 0.0)
        n_ctx[r, d] = total.clamp(min=0)
        start = t.indptr[d][ctx]
        deg = t.indptr[d][ctx + 1] - start
        rows = r.repeat_interleave(deg)
        first = torch.cumsum(deg, 0) - deg
        idx = (torch.arange(rows.numel(), device=seq.device) - first.repeat_interleave(deg)
               + start.repeat_interleave(deg))
        item, c = t.indices[d][idx], t.counts[d][idx]
        if target is not None:
            c = c - (item == target[rows]).to(c.dtype)
        keep = c > 0
        rows, item, c = rows[keep], item[keep], c[keep]
        parts.append((rows, item, torch.full_like(rows, d), c / n_ctx[rows, d]))
    rows, item, lag, p = (torch.cat(x) for x in zip(*parts))
    return TransitionPairs(rows, item, lag, p, n_ctx)


def transition_log_weights(gate_logits: torch.Tensor, count_w: torch.Tensor, n_ctx: torch.Tensor) -> torch.Tensor:
    """(rows, 1 + lags) log mixture weights from the gate's logits (rows, 1 + lags) and the context
    counts n (rows, lags): the network's, then each lag's (-inf where that context has no successors)."""
    g = gate_logits.float()
    lag_w = g[:, 1:] + count_w * torch.log(n_ctx.clamp(min=1.0))
    lag_w = lag_w.masked_fill(n_ctx == 0, -torch.inf)
    return torch.log_softmax(torch.cat([g[:, :1], lag_w], 1), 1)


def transition_target_log_prob(net_log_p: torch.Tensor, logw: torch.Tensor, pairs: TransitionPairs,
                               target: torch.Tensor) -> torch.Tensor:
    """(n,) log p(target) under the mixture, from the network's log p(target) (n,) of each trained
    position, its log-weights (n, 1 + lags) and its pairs (leave-one-out)."""
    rows, item, lag, p, _ = pairs
    hit = item == target[rows]
    mass = torch.zeros(len(target), device=logw.device).index_add(0, rows[hit], logw[rows[hit], 1 + lag[hit]].exp()
                                                                  * p[hit])
    # log(0) = -inf where no lag saw the target; the clamp keeps its gradient 0, not 0 * inf
    log_mass = torch.where(mass > 0, torch.log(mass.clamp(min=1e-30)), -torch.inf)
    return torch.logaddexp(logw[:, 0] + net_log_p, log_mass)


def transition_ranker(net_log_p: Callable[[int, int], torch.Tensor], logw: torch.Tensor, pairs: TransitionPairs,
                      n_items: int) -> Callable[[int, int], torch.Tensor]:
    """(lo, hi) -> (B, hi - lo) log of the mixture w0 * p_net + sum_k w_k * c_k / n_k over items
    lo..hi-1, from the network's log-probabilities `net_log_p(lo, hi)` of the last position of each
    row, its log-weights (B, 1 + lags) and its pairs."""
    rows, item, lag, p, _ = pairs
    keys, inv = torch.unique(rows * n_items + item, return_inverse=True)
    mass = torch.zeros(len(keys), device=logw.device).index_add(0, inv, logw[rows, 1 + lag].exp() * p)
    krow, kitem, log_mass = keys // n_items, keys % n_items, torch.log(mass)

    def log_p(lo: int, hi: int) -> torch.Tensor:
        out = net_log_p(lo, hi).float() + logw[:, :1]
        sel = (kitem >= lo) & (kitem < hi)
        r, j = krow[sel], kitem[sel] - lo
        out[r, j] = torch.logaddexp(out[r, j], log_mass[sel])
        return out
    return log_p
