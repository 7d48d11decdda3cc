"""The multi-view multi-task sequence model (DESIGN.md section 5). Torch only.

Item representation = id embedding + item-view features (categorical, multi-hot, numeric buckets,
popularity bucket, text vector), shared by the input sequence and the output scoring. Per position,
the sequence state is fused with the user-profile vector (`concat`, `sum`, `gated`). Heads: next item
(full softmax, or sampled softmax with logQ correction above a catalogue size), next-item attributes
(multi-label), engagement of the next event. Ablations are switches, not separate code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.nn import functional as F

from seqrec.encoding import ITEM_FIRST  # item indices 0 (padding) and 1 (unknown) are never predicted


LSE_CHUNK = 65_536


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _history_is_part_of_the_user_view(self) -> "ModelConfig":
        if self.user_history and not self.user_view:
            raise ValueError("model.user_history=true is part of the user view: it needs model.user_view=true")
        return self
    # defaults chosen on ml-100k *validation* NDCG@10 (BENCHMARKS.md, "model selection")
    encoder: Literal["lstm", "transformer", "hybrid"] = "lstm"
    dim: int = Field(64, ge=8)
    layers: int = Field(1, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.4, ge=0.0, lt=1.0)  # chosen over 0.2 on validation (BENCHMARKS.md, "model selection")
    attn_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on attention weights (costly on CPU)")
    max_len: int = Field(50, ge=2)
    item_view: bool = True
    user_view: bool = True
    fusion: Literal["concat", "sum", "gated"] = "gated"
    attr_task: bool = True
    engage_task: bool = True
    loss_weights: dict[str, float] = {"next": 1.0, "attr": 0.2, "engage": 0.2}
    uncertainty_weighting: bool = False
    next_loss: Literal["auto", "full", "sampled"] = Field(
        "auto", description="next-item loss: full softmax over the catalogue, sampled softmax with logQ "
                            "correction, or auto = sampled above `sampled_softmax_above` items")
    sampled_softmax_above: int = Field(200_000, description="catalogue size above which `auto` samples negatives")
    n_negatives: int = Field(1024, ge=1, description="negatives per batch for the sampled softmax (shared)")
    mixtures: int = Field(
        1, ge=1, le=16, description="next-item head as a mixture of this many softmaxes (MoS, Yang et al. 2018): "
                                    "a dot-product softmax is log-linear and cannot express 'a few fixed successors "
                                    "OR the user's taste'; a mixture can. Full softmax only")
    repeat_bias: bool = Field(
        True, description="learned score offset for items already in the input window, one per recency "
                          "bucket (RepeatNet-style repeat/explore): the model learns from the training "
                          "targets how likely a user is to return to an item seen k events ago")
    # 0: chosen on ml-100k validation (the mixture lost 0.007 NDCG@10 over 3 seeds; it wins on logs
    # where fixed successors drive the next item: BENCHMARKS.md, "transition mixture")
    user_history: bool = Field(
        False, description="the user view also summarises the user's events up to each position (how many, "
                           "and the distribution of their item attributes), computed causally from the sequence "
                           "and a summary of the events before the window: training positions never see their own "
                           "future, and a request's history feeds it at serving time")
    transition_lags: int = Field(
        0, ge=0, le=8, description="next-item distribution = a learned mixture of the network's softmax and, per "
                                   "lag k = 1..transition_lags, the empirical distribution of the items that "
                                   "followed the item k events back in the training events (c / n); the mixture "
                                   "weights come from the sequence state and the context counts n. 0 = the "
                                   "network alone. Needs views with that many lags (views.transition_lags)")


def _prefix(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The batch's summary of the events before each window (models/data.py), if it has one."""
    return (batch["pre_n"], batch["pre_attr"]) if "pre_n" in batch else None


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
        if self.hist_attr is not None:
            attr = self.history.to(seq.device)[seq] * real.unsqueeze(-1)
            acc = attr.cumsum(1)
            if pre_attr is not None:
                acc = acc + pre_attr.to(seq.device, torch.float32).unsqueeze(1)
            dist = acc / acc.sum(-1, keepdim=True).clamp(min=1e-6)
            out = out + self.hist_attr(dist) * real.unsqueeze(-1)
        return out


class CausalTransformer(nn.Module):
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


class SeqRecNet(nn.Module):
    def __init__(self, cfg: ModelConfig, n_items: int, n_event_types: int, n_gap_buckets: int,
                 items: ItemTables | None, users: UserTables | None, n_users: int,
                 transitions: TransitionTables | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.n_items = n_items
        self.items = ItemEncoder(n_items, d, items if cfg.item_view else None)
        self.etype = side_embedding(n_event_types, d)
        self.gap = side_embedding(n_gap_buckets, d)
        self.pos = side_embedding(cfg.max_len, d, padding=False)
        self.in_norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = (nn.LSTM(d, d, num_layers=1 if cfg.encoder == "hybrid" else cfg.layers, batch_first=True,
                             dropout=cfg.dropout if cfg.encoder == "lstm" and cfg.layers > 1 else 0.0)
                     if cfg.encoder in ("lstm", "hybrid") else None)
        self.attn = (CausalTransformer(d, 1 if cfg.encoder == "hybrid" else cfg.layers, cfg.heads, cfg.dropout,
                                       cfg.attn_dropout)
                     if cfg.encoder in ("transformer", "hybrid") else None)
        history = None
        if cfg.user_history:
            history = items.attr_target if items is not None else torch.zeros(n_items, 0)
        self.user = UserEncoder(d, users, cfg.dropout, history) if cfg.user_view and users is not None else None
        if self.user is not None:
            self.fuse = (nn.Linear(2 * d, d) if cfg.fusion == "concat" else
                         nn.Linear(2 * d, d) if cfg.fusion == "gated" else None)
        self.out_norm = nn.LayerNorm(d)
        attr_dim = items.attr_target.shape[1] if items is not None else 0
        self.attr_head = nn.Linear(d, attr_dim) if cfg.attr_task and attr_dim else None
        self.engage_head = nn.Linear(d, 1) if cfg.engage_task else None
        self.log_vars = nn.Parameter(torch.zeros(3)) if cfg.uncertainty_weighting else None
        self.attr_target = items.attr_target if items is not None else None
        self.repeat_bias = nn.Parameter(torch.zeros(recency_buckets(cfg.max_len))) if cfg.repeat_bias else None
        self.transitions = None
        if cfg.transition_lags:
            have = transitions.lags if transitions is not None else 0
            if have < cfg.transition_lags:
                raise ValueError(f"model.transition_lags={cfg.transition_lags} needs transition tables of that many "
                                 f"lags, the views have {have} (views.transition_lags): raise it, or lower "
                                 f"model.transition_lags")
            self.transitions = transitions
            # mixture weights: network component first, then one per lag
            self.trans_gate = nn.Linear(d, 1 + cfg.transition_lags)
            self.trans_count_w = nn.Parameter(torch.zeros(cfg.transition_lags))
        if cfg.mixtures > 1:
            self.mos_proj = nn.Linear(d, cfg.mixtures * d)
            self.mos_prior = nn.Linear(d, cfg.mixtures)
            if self.sampled_next_loss():
                raise ValueError(f"model.mixtures={cfg.mixtures} needs the full softmax, but the next-item loss is "
                                 f"sampled ({n_items} items, model.next_loss={cfg.next_loss}, "
                                 f"model.sampled_softmax_above={cfg.sampled_softmax_above}): use mixtures=1 or next_loss=full")

    def encode(self, seq: torch.Tensor, etype: torch.Tensor, gap: torch.Tensor, users: torch.Tensor,
               table: torch.Tensor | None = None, prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
               items: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) left-padded inputs -> (B, L, dim) fused states. `prefix`: the summary of the events
        before the window (model.user_history); `items`: the window's catalogue indices when `seq`
        holds local row numbers of `table` (the sampled loss)."""
        table = self.items.table() if table is None else table
        L = seq.shape[1]
        pos = torch.arange(L, device=seq.device).unsqueeze(0)
        x = table[seq] + self.etype(etype) + self.gap(gap) + self.pos(pos + (self.cfg.max_len - L))
        x = self.drop(self.in_norm(x))
        pad = seq == 0
        if self.lstm is not None:
            x, _ = self.lstm(x)
            x = self.drop(x)
        if self.attn is not None:
            x = self.attn(x, pad)
        if self.user is not None:
            u = self.user(users, seq if items is None else items, prefix)
            u = u.unsqueeze(1).expand_as(x) if u.dim() == 2 else u
            if self.cfg.fusion == "sum":
                x = x + u
            elif self.cfg.fusion == "concat":
                x = self.fuse(torch.cat([x, u], -1))
            else:
                # residual gate: the user view is let in per dimension, but the sequence state is
                # always kept; a softmax gate over [sequence, user] could drop the sequence path and
                # collapsed next-item ranking to a static per-user list (BENCHMARKS.md, ablations)
                g = torch.sigmoid(self.fuse(torch.cat([x, u], -1)))
                x = x + g * u
        return self.out_norm(x)

    def scores(self, h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return h @ table.T

    def ranker(self, h: torch.Tensor, seq: torch.Tensor, table: torch.Tensor):
        """(lo, hi) -> (B, hi - lo) scores of items lo..hi-1 after the last position of `seq`.
        Every ranking path (evaluation, serving, the A/B re-score) goes through here, so they score
        alike. With a mixture of softmaxes or the transition mixture the scores are log-probabilities
        (each softmax's normaliser is computed once, over the whole catalogue); otherwise logits."""
        offsets = self.offsets(seq)

        def logits(hs: torch.Tensor, lo: int, hi: int) -> torch.Tensor:  # hs (B, d) -> (B, hi - lo)
            s = hs @ table[lo:hi].T
            return s if offsets is None else self._add_offsets(s, offsets, lo, hi)

        if self.cfg.mixtures == 1:
            if self.transitions is None:
                return lambda lo, hi: logits(h, lo, hi)
            lse = _chunked_logsumexp(lambda lo, hi: logits(h, lo, hi), ITEM_FIRST, self.n_items)
            return self._with_transitions(lambda lo, hi: logits(h, lo, hi).float() - lse.unsqueeze(-1), h, seq)
        comps, log_prior = self._mixture(h)  # (B, K, d), (B, K)
        K = comps.shape[1]
        lse = torch.stack([_chunked_logsumexp(lambda lo, hi, k=k: logits(comps[:, k], lo, hi), ITEM_FIRST,
                                              self.n_items) for k in range(K)], 1)  # (B, K)
        log_p = lambda lo, hi: torch.logsumexp(  # noqa: E731
            torch.stack([logits(comps[:, k], lo, hi) for k in range(K)], 1) + (log_prior - lse).unsqueeze(-1), 1)
        return log_p if self.transitions is None else self._with_transitions(log_p, h, seq)

    def _with_transitions(self, net_log_p, h: torch.Tensor, seq: torch.Tensor):
        """(lo, hi) -> log of the mixture w0 * p_net + sum_k w_k * c_k / n_k over items lo..hi-1, from
        the network's log-probabilities `net_log_p(lo, hi)` of the last position."""
        B, L = seq.shape
        rows, item, lag, p, n_ctx = self._transition_pairs(seq, torch.arange(B, device=seq.device) * L + (L - 1))
        logw = self._mixture_weights(h, n_ctx)
        keys, inv = torch.unique(rows * self.n_items + item, return_inverse=True)
        mass = torch.zeros(len(keys), device=h.device).index_add(0, inv, logw[rows, 1 + lag].exp() * p)
        krow, kitem, log_mass = keys // self.n_items, keys % self.n_items, torch.log(mass)

        def log_p(lo: int, hi: int) -> torch.Tensor:
            out = net_log_p(lo, hi).float() + logw[:, :1]
            sel = (kitem >= lo) & (kitem < hi)
            r, j = krow[sel], kitem[sel] - lo
            out[r, j] = torch.logaddexp(out[r, j], log_mass[sel])
            return out
        return log_p

    def rank_scores(self, h: torch.Tensor, seq: torch.Tensor, table: torch.Tensor, lo: int = 0,
                    hi: int | None = None) -> torch.Tensor:
        """ranker()(lo, hi) in one call: (B, hi - lo)."""
        return self.ranker(h, seq, table)(lo, self.n_items if hi is None else hi)

    def _mixture(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MoS components (n, K, d) and log mixture weights (n, K) of states h (n, d)."""
        K = self.cfg.mixtures
        comps = torch.tanh(self.mos_proj(h)).view(*h.shape[:-1], K, h.shape[-1])
        return comps, torch.log_softmax(self.mos_prior(h).float(), -1)

    def sampled_next_loss(self) -> bool:
        """Whether the next-item head trains with sampled softmax (needs item log-frequencies)."""
        return self.cfg.next_loss == "sampled" or (self.cfg.next_loss == "auto"
                                                   and self.n_items > self.cfg.sampled_softmax_above)

    def forward(self, batch: dict[str, torch.Tensor],
                item_log_q: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        # the training step goes through forward() so that DistributedDataParallel's hooks see it
        return self.loss(batch, item_log_q)

    def loss(self, batch: dict[str, torch.Tensor], item_log_q: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        tgt = batch["target"]
        valid = tgt > 0
        tv = tgt[valid]
        sampled = self.sampled_next_loss()
        if sampled and item_log_q is None and self.cfg.next_loss == "sampled":
            raise ValueError("model.next_loss=sampled needs the items' log-frequencies (item_log_q)")
        if sampled and item_log_q is not None:
            # negatives drawn from q (shared across the batch); only the items this step touches
            # (inputs, targets, negatives) are represented, never the whole catalogue
            neg = torch.multinomial(item_log_q.exp(), self.cfg.n_negatives, replacement=True)
            seq = batch["seq"]
            pad = torch.zeros(1, dtype=seq.dtype, device=seq.device)  # id 0 first: local id 0 is padding
            ids, local = torch.unique(torch.cat([pad, seq.flatten(), tv, neg]), return_inverse=True)
            rows = self.items.rows(ids)
            n_seq = seq.numel()
            h = self.encode(local[1:1 + n_seq].view_as(seq), batch["etype"], batch["gap"], batch["user"], rows,
                            _prefix(batch), seq)
            hv = h[valid]
            tl, nl = local[1 + n_seq:1 + n_seq + len(tv)], local[1 + n_seq + len(tv):]
            bias = self._sampled_offsets(self.offsets(seq, valid), tv, neg)
            log_p = -_sampled_softmax(hv, tv, neg, rows[tl], rows[nl], item_log_q, bias, reduction="none")
        else:
            table = self.items.table()
            h = self.encode(batch["seq"], batch["etype"], batch["gap"], batch["user"], table, _prefix(batch))
            hv = h[valid]
            pairs = self.offsets(batch["seq"], valid)
            if self.cfg.mixtures == 1:
                log_p = -F.cross_entropy(self._full_logits(hv, table, pairs).float(), tv, reduction="none")
            else:
                comps, log_prior = self._mixture(hv)
                log_p = torch.stack([torch.log_softmax(self._full_logits(comps[:, k], table, pairs).float(), -1)
                                     for k in range(comps.shape[1])], 1)  # (n, K, N)
                log_p = torch.logsumexp(log_p.gather(2, tv.view(-1, 1, 1).expand(-1, log_p.shape[1], 1))
                                        .squeeze(2) + log_prior, 1)
        if self.transitions is not None:
            log_p = self._target_log_mixture(log_p, hv, batch["seq"], valid, tv)
        losses = {"next": -log_p.mean()}
        if self.attr_head is not None:
            target = self.attr_target.to(h.device)[tv]
            losses["attr"] = F.binary_cross_entropy_with_logits(self.attr_head(hv).float(), target)
        if self.engage_head is not None:
            losses["engage"] = F.binary_cross_entropy_with_logits(self.engage_head(hv).squeeze(-1).float(),
                                                                  batch["engage"][valid].float())
        total = torch.zeros((), device=h.device)
        for j, (k, v) in enumerate(losses.items()):
            if self.log_vars is not None:
                total = total + torch.exp(-self.log_vars[j]) * v + self.log_vars[j]
            else:
                total = total + self.cfg.loss_weights.get(k, 1.0) * v
        losses["total"] = total
        return losses

    def _full_logits(self, hv: torch.Tensor, table: torch.Tensor, offsets: tuple | None) -> torch.Tensor:
        """(n, N) training logits over the whole catalogue, offsets added, padding/unknown never."""
        logits = self.scores(hv, table)
        if offsets is not None:
            # in place: the (positions x catalogue) matrix is the step's biggest; matmul's backward
            # does not need its output, so autograd allows it
            self._add_offsets(logits, offsets, in_place=True)
        logits[:, :ITEM_FIRST] = -1e9
        return logits

    def offsets(self, seq: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, ...] | None:
        """The repeat bias as sparse logit offsets: (row, item, value) triples; None when it is off.
        Training (`valid` given): rows number the trained positions as h[valid] does; otherwise
        rows are the batch rows, scored after their last position."""
        if self.repeat_bias is None:
            return None
        r, item, bucket = self._valid_pairs(seq, valid) if valid is not None else history_pairs(seq, last_only=True)
        return r, item, self.repeat_bias[bucket]

    def _transition_pairs(self, seq: torch.Tensor, pos: torch.Tensor, target: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, ...]:
        """For positions pos[row] (flat b * L + l of `seq`) and each lag d + 1, the training successors
        of the item d events before the position: (row, item, lag index d, c / n) per pair, and n per
        (row, lag) (0: no such context item or no successors). c = how often the item followed the
        context item at that lag in the training events, n = all successors of the context item.
        Leave-one-out in training (`target` given): the counts include the position's own transition,
        which is taken out (c - 1 for the target, n - 1), so the model learns how much a count says
        about an unseen next event, the only kind it will score."""
        t = self.transitions.on(seq.device)
        flat, L = seq.flatten(), seq.shape[1]
        n_ctx = torch.zeros(len(pos), self.cfg.transition_lags, device=seq.device)
        parts = []
        for d in range(self.cfg.transition_lags):
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
        return rows, item, lag, p, n_ctx

    def _mixture_weights(self, h: torch.Tensor, n_ctx: torch.Tensor) -> torch.Tensor:
        """(rows, 1 + lags) log mixture weights: the network's, then each lag's transition distribution
        (none where that context has no successors). The counts enter the weights too: 3 successors
        out of 3 say less than 300 out of 300."""
        g = self.trans_gate(h).float()
        lag_w = g[:, 1:] + self.trans_count_w * torch.log(n_ctx.clamp(min=1.0))
        lag_w = lag_w.masked_fill(n_ctx == 0, -torch.inf)
        return torch.log_softmax(torch.cat([g[:, :1], lag_w], 1), 1)

    def _target_log_mixture(self, net_log_p: torch.Tensor, hv: torch.Tensor, seq: torch.Tensor,
                            valid: torch.Tensor, tv: torch.Tensor) -> torch.Tensor:
        """log p(target) under the mixture, from the network's log p(target) of each trained position."""
        rows, item, lag, p, n_ctx = self._transition_pairs(seq, valid.flatten().nonzero().squeeze(1), tv)
        logw = self._mixture_weights(hv, n_ctx)
        hit = item == tv[rows]
        mass = torch.zeros(len(tv), device=hv.device).index_add(0, rows[hit], logw[rows[hit], 1 + lag[hit]].exp()
                                                                * p[hit])
        # log(0) = -inf where no lag saw the target; the clamp keeps its gradient 0, not 0 * inf
        log_mass = torch.where(mass > 0, torch.log(mass.clamp(min=1e-30)), -torch.inf)
        return torch.logaddexp(logw[:, 0] + net_log_p, log_mass)

    def _add_offsets(self, s: torch.Tensor, offsets: tuple[torch.Tensor, ...], lo: int = 0,
                     hi: int | None = None, in_place: bool = False) -> torch.Tensor:
        """s (rows x items lo..hi-1) plus the offsets of the (row, item, value) triples in range."""
        rows, item, vals = offsets
        if lo or hi is not None:
            keep = (item >= lo) & (item < (self.n_items if hi is None else hi))
            rows, item, vals = rows[keep], item[keep] - lo, vals[keep]
        vals = vals.to(s.dtype)
        if in_place:
            return s.index_put_((rows, item), vals, accumulate=True)
        return s.index_put((rows, item), vals, accumulate=True)

    def _valid_pairs(self, seq: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """history_pairs of the trained positions, their row numbering that of h[valid]."""
        pos, item, bucket = history_pairs(seq)
        flat = valid.flatten()
        row_of = torch.cumsum(flat, 0) - 1
        keep = flat[pos]
        return row_of[pos[keep]], item[keep], bucket[keep]

    def _sampled_offsets(self, offsets: tuple[torch.Tensor, ...] | None, tv: torch.Tensor,
                         neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The offsets of each trained position's target (n,) and of the shared negatives (n, K),
        looked up by (row, item) key: the (n x catalogue) matrix is what sampling avoids."""
        if offsets is None:
            return None
        r, item, vals = offsets  # each (row, item) once (history_pairs)
        keys, order = torch.sort(r * self.n_items + item)
        vals = vals[order]
        row = torch.arange(len(tv), device=tv.device)
        return (_lookup(keys, vals, row * self.n_items + tv),
                _lookup(keys, vals, row.unsqueeze(1) * self.n_items + neg.unsqueeze(0)))

    @torch.no_grad()
    def last_state(self, seq, etype, gap, users, table=None, prefix=None) -> torch.Tensor:
        return self.encode(seq, etype, gap, users, table, prefix)[:, -1]


def _chunked_logsumexp(logits, lo: int, hi: int, chunk: int = LSE_CHUNK) -> torch.Tensor:
    """logsumexp over items lo..hi-1 of `logits(a, b)` -> (B, b - a), `chunk` items at a time (the
    chunking is fixed here, so a normaliser never depends on the caller's item chunk)."""
    parts = [torch.logsumexp(logits(a, min(hi, a + chunk)).float(), 1) for a in range(lo, hi, chunk)]
    return torch.logsumexp(torch.stack(parts, 1), 1)


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


def _bucket(k: torch.Tensor) -> torch.Tensor:
    return torch.where(k > 0, torch.floor(torch.log2(k.clamp(min=1).double())).long() + 1, 0)


def _lookup(keys: torch.Tensor, vals: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """vals[keys == query] per query element, 0 where the sorted `keys` lack it."""
    if not len(keys):
        return torch.zeros(query.shape, dtype=vals.dtype, device=query.device)
    q = query.flatten()
    pos = torch.searchsorted(keys, q).clamp(max=len(keys) - 1)
    return torch.where(keys[pos] == q, vals[pos], torch.zeros((), dtype=vals.dtype, device=q.device)).view(query.shape)


def _sampled_softmax(h: torch.Tensor, tgt: torch.Tensor, neg: torch.Tensor, tgt_rows: torch.Tensor,
                     neg_rows: torch.Tensor, log_q: torch.Tensor,
                     bias: tuple[torch.Tensor, torch.Tensor] | None = None, reduction: str = "mean") -> torch.Tensor:
    """Sampled softmax with logQ correction: item ids `tgt` (per row of h) and `neg` (shared), their
    item representations, and log q of every item; `bias` adds per-row offsets (target, negatives).
    reduction="none": per-row losses (-log p(target) estimates)."""
    pos_logit = (h * tgt_rows).sum(-1, keepdim=True) - log_q[tgt].unsqueeze(-1)
    neg_logit = h @ neg_rows.T - log_q[neg].unsqueeze(0)
    if bias is not None:
        pos_logit = pos_logit + bias[0].unsqueeze(-1).to(pos_logit.dtype)
        neg_logit = neg_logit + bias[1].to(neg_logit.dtype)
    neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == tgt.unsqueeze(1), -1e9)
    logits = torch.cat([pos_logit, neg_logit], -1).float()
    return F.cross_entropy(logits, torch.zeros(len(tgt), dtype=torch.long, device=h.device), reduction=reduction)


def param_count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())

