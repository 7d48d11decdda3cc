"""The encoders of the network's inputs, and the item and user tables they read.

- `ItemEncoder`: one vector per item = id embedding + the item view (categorical, multi-hot, numeric
  buckets, popularity bucket, text vector). The same table embeds the input sequence and scores
  the output, so an item is one point in one space.
- `UserEncoder`: the user view, one vector per user (profile attributes and activity statistics),
  or per position with `history` (a causal summary of the user's events up to that position).
- `CausalTransformer`: self-attention over the sequence, each position seeing itself and the past.
- `sequence_layers`: the layers over the sequence (model.encoder): an LSTM, self-attention, or both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def side_embedding(n: int, dim: int, bag: bool = False, padding: bool = True) -> nn.Embedding | nn.EmbeddingBag:
    """A table whose rows are *added* to item-id embeddings (event type, time gap, position, item
    and user attributes), initialised at the id embeddings' scale (std dim**-0.5). At torch's default
    N(0, 1) they were ~sqrt(dim) times larger, so after the input LayerNorm an item's identity was
    noise next to its event type and gap: on a 400-item synthetic set the network then learned
    little beyond popularity (validation NDCG@10 0.07 vs 0.36 for the same network with this init;
    BENCHMARKS.md, "initialisation")."""
    pad = 0 if padding else None
    emb = (nn.EmbeddingBag(n, dim, mode="mean", padding_idx=pad) if bag else nn.Embedding(n, dim, padding_idx=pad))
    nn.init.normal_(emb.weight, std=dim ** -0.5)
    if padding:
        with torch.no_grad():
            emb.weight[0].zero_()
    return emb


@dataclass
class ItemTables:
    """Item-view inputs for every item index (0 = pad, 1 = unknown)."""

    cat: torch.Tensor        # (N, n_cat) long, 0 = missing
    cat_sizes: list[int]
    multi: torch.Tensor      # (N, M) long, 0 = pad
    multi_size: int
    num: torch.Tensor        # (N, n_num) long bucket codes, 0 = missing
    num_size: int
    pop: torch.Tensor        # (N,) long popularity bucket
    pop_size: int
    text: torch.Tensor       # (N, T) float
    attr_target: torch.Tensor  # (N, A) float multi-hot for the attribute head


@dataclass
class UserTables:
    cat: torch.Tensor        # (U, n_cat) long
    cat_sizes: list[int]
    num: torch.Tensor        # (U, n_num) long buckets (profile numerics + activity statistics)
    num_size: int
    dense: torch.Tensor      # (U, D) float (e.g. genre distribution of training events)


class ItemEncoder(nn.Module):
    def __init__(self, n_items: int, dim: int, tables: ItemTables | None) -> None:
        super().__init__()
        self.id_emb = nn.Embedding(n_items, dim, padding_idx=0)
        nn.init.normal_(self.id_emb.weight, std=dim ** -0.5)
        self.tables = tables
        if tables is None:
            return
        self.cat = nn.ModuleList(side_embedding(s, dim) for s in tables.cat_sizes)
        self.multi = side_embedding(max(tables.multi_size, 1), dim, bag=True)
        self.num = side_embedding(max(tables.num_size, 1), dim)
        self.pop = side_embedding(max(tables.pop_size, 1), dim)
        self.text = nn.Linear(tables.text.shape[1], dim) if tables.text.shape[1] else None
        self.mix = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.tensor(0.5))

    def table(self) -> torch.Tensor:
        """(N, dim): the representation of every item, used for input and output."""
        w = self.id_emb.weight
        t = self.tables
        if t is None:
            return w
        dev = w.device
        feat = self.multi(t.multi.to(dev)) + self.num(t.num.to(dev)).mean(1) + self.pop(t.pop.to(dev))
        for j, emb in enumerate(self.cat):
            feat = feat + emb(t.cat[:, j].to(dev))
        if self.text is not None:
            feat = feat + self.text(t.text.to(dev))
        feat = self.mix(feat)
        feat = torch.cat([torch.zeros_like(feat[:1]), feat[1:]])  # padding stays zero
        return w + self.scale * feat

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """(len(ids), dim): table()[ids] computed for those items only (a sampled-softmax step
        touches a few thousand of 100k-1M items; the whole table was ~3/4 of such a step)."""
        w = self.id_emb.weight[ids]
        t = self.tables
        if t is None:
            return w
        dev = w.device
        i = ids.cpu()
        feat = self.multi(t.multi[i].to(dev)) + self.num(t.num[i].to(dev)).mean(1) + self.pop(t.pop[i].to(dev))
        for j, emb in enumerate(self.cat):
            feat = feat + emb(t.cat[i, j].to(dev))
        if self.text is not None:
            feat = feat + self.text(t.text[i].to(dev))
        feat = self.mix(feat).masked_fill((ids == 0).unsqueeze(-1), 0.0)  # padding stays zero
        return w + self.scale * feat


HISTORY_COUNT_BUCKETS = 20  # log2 buckets of "events so far": 1, 2-3, 4-7, ... (2**19 and more share one)


class UserEncoder(nn.Module):
    """Profile attributes and (views) statistics of the user: one vector per user. With `history`
    (the attribute table of the items, (N, A)) also a per-position summary of the user's events up
    to that position, so the result is (B, L, dim)."""

    def __init__(self, dim: int, tables: UserTables, dropout: float, history: torch.Tensor | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.tables = tables
        self.cat = nn.ModuleList(side_embedding(s, dim) for s in tables.cat_sizes)
        self.num = side_embedding(max(tables.num_size, 1), dim)
        self.dense = nn.Linear(tables.dense.shape[1], dim) if tables.dense.shape[1] else None
        self.history = history
        if history is not None:
            self.count = side_embedding(HISTORY_COUNT_BUCKETS + 1, dim)
            self.hist_attr = nn.Linear(history.shape[1], dim) if history.shape[1] else None
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, users: torch.Tensor, seq: torch.Tensor | None = None,
                prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        t = self.tables
        dev = users.device
        u = users.cpu()
        # no numeric column at all (no profile numbers, no activity statistics): nothing to average
        h = self.num(t.num[u].to(dev)).mean(1) if t.num.shape[1] else torch.zeros(len(u), self.dim, device=dev)
        for j, emb in enumerate(self.cat):
            h = h + emb(t.cat[u, j].to(dev))
        if self.dense is not None:
            h = h + self.dense(t.dense[u].to(dev))
        if self.history is not None and seq is not None:
            h = h.unsqueeze(1) + self._history(seq, prefix)
        return self.mlp(h)

    def _history(self, seq: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """(B, L, dim): at each position, the events up to it (the window's and the `prefix` summary
        of those before the window: count (B,), attribute sums (B, A)); zero at padding."""
        real = (seq > 0).to(torch.float32)
        pre_n, pre_attr = prefix if prefix is not None else (None, None)
        n = real.cumsum(1) + (pre_n.to(seq.device, torch.float32).unsqueeze(1) if pre_n is not None else 0.0)
        bucket = (torch.floor(torch.log2(n.clamp(min=1.0))) + 1).clamp(max=HISTORY_COUNT_BUCKETS).long()
        out = self.count(bucket * (seq > 0))
        if self.hist_attr is not None and self.history is not None:
            attr = self.history.to(seq.device)[seq] * real.unsqueeze(-1)
            acc = attr.cumsum(1)
            if pre_attr is not None:
                acc = acc + pre_attr.to(seq.device, torch.float32).unsqueeze(1)
            dist = acc / acc.sum(-1, keepdim=True).clamp(min=1e-6)
            out = out + self.hist_attr(dist) * real.unsqueeze(-1)
        return out


class CausalTransformer(nn.Module):
    """Pre-norm transformer blocks over (B, L, dim), causal: each position attends to itself and the
    real (non-padded) positions before it."""

    def __init__(self, dim: int, layers: int, heads: int, dropout: float, attn_dropout: float = 0.0) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        for lyr in self.enc.layers:
            # masks over B*heads*L*L weights were ~20% of a CPU step; residual/FFN dropout stays
            lyr.self_attn.dropout = attn_dropout
        self.norm = nn.LayerNorm(dim)
        self.heads = heads

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        eye = torch.eye(L, dtype=torch.bool, device=x.device)
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=x.device), 1)
        # blocked = future keys, or padded keys; each position always sees itself, so no row is
        # fully masked (a fully masked row gives NaN, and 0 * NaN leaks into real rows)
        blocked = (causal.unsqueeze(0) | pad.unsqueeze(1)) & ~eye
        blocked = blocked.repeat_interleave(self.heads, 0)
        x = x.masked_fill(pad.unsqueeze(-1), 0.0)
        return self.norm(self.enc(x, mask=blocked))


def sequence_layers(kind: str, dim: int, layers: int, heads: int, dropout: float,
                    attn_dropout: float) -> tuple[nn.LSTM | None, CausalTransformer | None]:
    """(LSTM, self-attention) over the sequence, either None: `lstm` = `layers` LSTM layers,
    `transformer` = `layers` attention blocks, `hybrid` = one LSTM layer, then one attention block."""
    lstm = (nn.LSTM(dim, dim, num_layers=1 if kind == "hybrid" else layers, batch_first=True,
                    dropout=dropout if kind == "lstm" and layers > 1 else 0.0)
            if kind in ("lstm", "hybrid") else None)
    attn = (CausalTransformer(dim, 1 if kind == "hybrid" else layers, heads, dropout, attn_dropout)
            if kind in ("transformer", "hybrid") else None)
    return lstm, attn
