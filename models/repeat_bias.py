"""The repeat bias (model.repeat_bias): a learned score offset for items already in the input window,
one per recency bucket (RepeatNet-style repeat/explore). The model learns from the training targets
how likely a user is to return to an item seen k events ago.

The bias vector itself is a parameter of the network (`SeqRecNet.repeat_bias`, one value per
`recency_buckets(max_len)`); this module turns it into sparse logit offsets, (row, item, value)
triples, and adds them to whichever logits a scoring path computes:

- `history_pairs`: which (position, item) pairs get a bias, and from which bucket;
- `repeat_offsets`: the bias of those pairs as (row, item, value) triples;
- `add_offsets`: dense logits (rows x an item range) plus the triples in that range;
- `sampled_offsets`: the triples looked up at a sampled softmax's targets and negatives.
"""

from __future__ import annotations

import torch


def recency_buckets(max_len: int) -> int:
    """Recency k = events between a past item and the position that predicts: bucket 0 for k = 0
    (the current item), then floor(log2 k) + 1, so the buckets cover 1, 2-3, 4-7, ... max_len - 1."""
    return (max_len - 1).bit_length() + 1


def history_pairs(seq: torch.Tensor, last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each position of left-padded `seq` (B, L), the distinct items at or before it with the
    recency bucket of their latest occurrence: (position, item, bucket) triples, position = b * L + l
    (with `last_only`, only l = L - 1 and position = b). Each (position, item) appears once."""
    B, L = seq.shape
    j = torch.arange(L, device=seq.device)
    same = seq.unsqueeze(2) == seq.unsqueeze(1)  # [b, j, j']: the same item at j and j'
    # the next occurrence of seq[b, j] after j (L if none): j is the latest occurrence up to l < that
    nxt = torch.where(same & (j.view(1, L, 1) < j.view(1, 1, L)), j.view(1, 1, L), L).amin(2)
    real = seq != 0
    if last_only:
        b, jj = (real & (nxt == L)).nonzero(as_tuple=True)
        return b, seq[b, jj], _bucket(L - 1 - jj)
    ll = j.view(1, L, 1)
    pair = (j.view(1, 1, L) <= ll) & (ll < nxt.unsqueeze(1)) & real.unsqueeze(1)  # [b, l, j]
    b, lpos, jj = pair.nonzero(as_tuple=True)
    return b * L + lpos, seq[b, jj], _bucket(lpos - jj)


def repeat_offsets(bias: torch.Tensor | None, seq: torch.Tensor,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, ...] | None:
    """The repeat bias `bias` (one value per recency bucket) as sparse logit offsets: (row, item,
    value) triples, each (row, item) once; None when the bias is off (`bias` None).
    Training (`valid` (B, L) given): rows number the trained positions as h[valid] does; otherwise
    rows are the batch rows, scored after their last position."""
    if bias is None:
        return None
    r, item, bucket = _valid_pairs(seq, valid) if valid is not None else history_pairs(seq, last_only=True)
    return r, item, bias[bucket]


def add_offsets(s: torch.Tensor, offsets: tuple[torch.Tensor, ...], lo: int = 0, hi: int | None = None,
                in_place: bool = False) -> torch.Tensor:
    """s (rows x items lo..hi-1; hi None: to the end of the catalogue) plus the offsets of the
    (row, item, value) triples in that range. `in_place` writes into s (allowed when autograd does
    not need s itself, e.g. a matmul's output)."""
    rows, item, vals = offsets
    if lo or hi is not None:
        keep = item >= lo if hi is None else (item >= lo) & (item < hi)
        rows, item, vals = rows[keep], item[keep] - lo, vals[keep]
    vals = vals.to(s.dtype)
    if in_place:
        return s.index_put_((rows, item), vals, accumulate=True)
    return s.index_put((rows, item), vals, accumulate=True)


def sampled_offsets(offsets: tuple[torch.Tensor, ...] | None, target: torch.Tensor, neg: torch.Tensor,
                    n_items: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The offsets of each trained position's target (n,) and of the shared negatives (n, K),
    looked up by (row, item) key: the (n x catalogue) matrix is what sampling avoids."""
    if offsets is None:
        return None
    r, item, vals = offsets  # each (row, item) once (history_pairs)
    keys, order = torch.sort(r * n_items + item)
    vals = vals[order]
    row = torch.arange(len(target), device=target.device)
    return (_lookup(keys, vals, row * n_items + target),
            _lookup(keys, vals, row.unsqueeze(1) * n_items + neg.unsqueeze(0)))


def _valid_pairs(seq: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """history_pairs of the trained positions, their row numbering that of h[valid]."""
    pos, item, bucket = history_pairs(seq)
    flat = valid.flatten()
    row_of = torch.cumsum(flat, 0) - 1
    keep = flat[pos]
    return row_of[pos[keep]], item[keep], bucket[keep]


def _bucket(k: torch.Tensor) -> torch.Tensor:
    return torch.where(k > 0, torch.floor(torch.log2(k.clamp(min=1).double())).long() + 1, 0)


def _lookup(keys: torch.Tensor, vals: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """vals[keys == query] per query element, 0 where the sorted `keys` lack it."""
    if not len(keys):
        return torch.zeros(query.shape, dtype=vals.dtype, device=query.device)
    q = query.flatten()
    pos = torch.searchsorted(keys, q).clamp(max=len(keys) - 1)
    return torch.where(keys[pos] == q, vals[pos], torch.zeros((), dtype=vals.dtype, device=q.device)).view(query.shape)
