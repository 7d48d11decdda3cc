"""The multi-view multi-task sequence model (DESIGN.md section 5). Torch only.

Item representation = id embedding + item-view features (categorical, multi-hot, numeric buckets,
popularity bucket, text vector), shared by the input sequence and the output scoring. Per position,
the sequence state is fused with the user-profile vector (`concat`, `sum`, `gated`). Heads: next item
(full softmax, or sampled softmax with logQ correction above a catalogue size), next-item attributes
(multi-label), engagement of the next event. Ablations are switches, not separate code.

`SeqRecNet` composes the parts; each lives in a module of its own:

- models/encoders.py     item and user encoders (ItemTables, UserTables), causal self-attention
- models/fusion.py       the user view fused into the sequence state (model.fusion)
- models/repeat_bias.py  score offsets for items already in the window (model.repeat_bias)
- models/mos.py          mixture of softmaxes (model.mixtures)
- models/transitions.py  mixture with the training events' transition counts (model.transition_lags)
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.nn import functional as F

from models.encoders import ItemEncoder, ItemTables, UserEncoder, UserTables, sequence_layers, side_embedding
from models.fusion import fuse, fusion_layer
from models.mos import chunked_logsumexp, mos_components, mos_ranker, mos_target_log_prob
from models.repeat_bias import add_offsets, recency_buckets, repeat_offsets, sampled_offsets
from models.transitions import (TransitionTables, checked_tables, transition_log_weights, transition_pairs,
                                transition_ranker, transition_target_log_prob)
from seqrec.encoding import ITEM_FIRST  # item indices 0 (padding) and 1 (unknown) are never predicted


# The strongest simple baseline of the literature as a configuration of this network: SASRec trained
# with cross-entropy over all items at every position (Klenitskiy & Vasilev, "Turning Dross Into Gold
# Loss: is BERT4Rec really better than SASRec?", RecSys 2023): 2 self-attention blocks, 1 head, d=64,
# dropout 0.1, item ids only (no views, no event-type or time-gap inputs, no auxiliary heads), the
# input item embeddings scoring the output. Its training settings (Adam 1e-3, batch 128, constant
# rate) are applied by flows/config.py's PipelineConfig when `model.preset=sasrec-ce`.
PRESETS: dict[str, dict] = {
    "sasrec-ce": {"encoder": "transformer", "layers": 2, "heads": 1, "dim": 64, "dropout": 0.1, "attn_dropout": 0.1,
                  "item_view": False, "user_view": False, "user_history": False, "attr_task": False,
                  "engage_task": False, "repeat_bias": False, "next_loss": "full", "mixtures": 1,
                  "transition_lags": 0, "side_inputs": False},
}


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _preset_fills_what_is_not_set(cls, data):
        if isinstance(data, dict) and data.get("preset") is not None:
            if data["preset"] not in PRESETS:
                return data  # the field's own validation names the allowed presets
            return {**PRESETS[data["preset"]], **data}
        return data

    @model_validator(mode="after")
    def _history_is_part_of_the_user_view(self) -> "ModelConfig":
        if self.user_history and not self.user_view:
            raise ValueError("model.user_history=true is part of the user view: it needs model.user_view=true")
        return self
    preset: Literal["sasrec-ce"] | None = Field(
        None, description="a named configuration (settings given explicitly still win): sasrec-ce = SASRec with "
                          "full cross-entropy, the reference baseline (models/net.py PRESETS)")
    side_inputs: bool = Field(True, description="add each event's type and time-gap embeddings to its input")
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


class SeqRecNet(nn.Module):
    """The network. In RecBole's terms: `encode` is forward, `loss` calculate_loss, `rank` full_sort_predict.

    `rank(h, seq, table)` is the one scoring entry point for ranking: it returns (lo, hi) -> scores
    of items lo..hi-1. Evaluation (models/train.py `evaluate_model`, item chunk by item chunk),
    serving and the A/B re-score (tasks/bundle.py `Scorer.scores`, the whole catalogue:
    `rank(h, seq, table)(0, n_items)`) all call it, so they score alike.

    Every parameter is an attribute of this class, created in `__init__` in a fixed order: the order
    fixes what a seed initialises; names and order are the format of checkpoints, registered bundles
    (`state_dict`) and the optimiser state. The optional mechanisms are functions of them (module docstring).
    """

    def __init__(self, cfg: ModelConfig, n_items: int, n_event_types: int, n_gap_buckets: int,
                 items: ItemTables | None, users: UserTables | None, n_users: int,
                 transitions: TransitionTables | None = None) -> None:
        super().__init__()
        self.cfg, self.n_items, d = cfg, n_items, cfg.dim
        self.items = ItemEncoder(n_items, d, items if cfg.item_view else None)
        self.etype = side_embedding(n_event_types, d) if cfg.side_inputs else None
        self.gap = side_embedding(n_gap_buckets, d) if cfg.side_inputs else None
        self.pos = side_embedding(cfg.max_len, d, padding=False)
        self.in_norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm, self.attn = sequence_layers(cfg.encoder, d, cfg.layers, cfg.heads, cfg.dropout, cfg.attn_dropout)
        history = None  # the item attributes that model.user_history summarises the user's events by
        if cfg.user_history:
            history = items.attr_target if items is not None else torch.zeros(n_items, 0)
        self.user = UserEncoder(d, users, cfg.dropout, history) if cfg.user_view and users is not None else None
        if self.user is not None:
            self.fuse = fusion_layer(cfg.fusion, d)
        self.out_norm = nn.LayerNorm(d)
        self.attr_target = items.attr_target if items is not None else None
        attr_dim = items.attr_target.shape[1] if items is not None else 0
        self.attr_head = nn.Linear(d, attr_dim) if cfg.attr_task and attr_dim else None
        self.engage_head = nn.Linear(d, 1) if cfg.engage_task else None
        self.log_vars = nn.Parameter(torch.zeros(3)) if cfg.uncertainty_weighting else None
        self.repeat_bias = nn.Parameter(torch.zeros(recency_buckets(cfg.max_len))) if cfg.repeat_bias else None
        self.transitions = checked_tables(transitions, cfg.transition_lags)
        if self.transitions is not None:  # mixture weights: network component first, then one per lag
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
        x = table[seq]
        if self.etype is not None and self.gap is not None:  # this addition order keeps trained numerics
            x = x + self.etype(etype) + self.gap(gap)
        x = x + self.pos(pos + (self.cfg.max_len - L))
        x = self.drop(self.in_norm(x))
        if self.lstm is not None:
            x = self.drop(self.lstm(x)[0])
        if self.attn is not None:
            x = self.attn(x, seq == 0)
        if self.user is not None:
            x = fuse(self.cfg.fusion, x, self.user(users, seq if items is None else items, prefix), self.fuse)
        return self.out_norm(x)

    @torch.no_grad()
    def last_state(self, seq, etype, gap, users, table=None, prefix=None) -> torch.Tensor:
        """(B, dim) states after each row's last position: the `h` that `rank` scores."""
        return self.encode(seq, etype, gap, users, table, prefix)[:, -1]

    def forward(self, batch: dict[str, torch.Tensor], item_log_q: torch.Tensor | None = None) -> dict:
        return self.loss(batch, item_log_q)  # training steps come here so that DDP's hooks see them

    def sampled_next_loss(self) -> bool:
        """Whether the next-item head trains with sampled softmax (needs item log-frequencies)."""
        return self.cfg.next_loss == "sampled" or (self.cfg.next_loss == "auto"
                                                   and self.n_items > self.cfg.sampled_softmax_above)

    def loss(self, batch: dict[str, torch.Tensor], item_log_q: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Losses of a batch of windows (positions with target 0 do not train): "next" (-log p(target)),
        "attr", "engage", and their weighted sum "total"."""
        valid = batch["target"] > 0
        tv = batch["target"][valid]
        sampled = self.sampled_next_loss()
        if sampled and item_log_q is None and self.cfg.next_loss == "sampled":
            raise ValueError("model.next_loss=sampled needs the items' log-frequencies (item_log_q)")
        hv, log_p = (self._sampled_log_p(batch, valid, tv, item_log_q) if sampled and item_log_q is not None
                     else self._full_log_p(batch, valid, tv))  # trained positions: states, log p(target)
        if self.transitions is not None:
            pairs, logw = self._transition_mixture(hv, batch["seq"], valid.flatten().nonzero().squeeze(1), tv)
            log_p = transition_target_log_prob(log_p, logw, pairs, tv)
        losses = {"next": -log_p.mean()}
        if self.attr_head is not None and self.attr_target is not None:
            target = self.attr_target.to(hv.device)[tv]
            losses["attr"] = F.binary_cross_entropy_with_logits(self.attr_head(hv).float(), target)
        if self.engage_head is not None:
            losses["engage"] = F.binary_cross_entropy_with_logits(self.engage_head(hv).squeeze(-1).float(),
                                                                  batch["engage"][valid].float())
        losses["total"] = _total(losses, self.log_vars, self.cfg.loss_weights, hv.device)
        return losses

    def _full_log_p(self, batch: dict[str, torch.Tensor], valid: torch.Tensor, tv: torch.Tensor):
        """Softmax (or mixture of softmaxes) over the whole catalogue."""
        table = self.items.table()
        hv = self.encode(batch["seq"], batch["etype"], batch["gap"], batch["user"], table, _prefix(batch))[valid]
        offsets = repeat_offsets(self.repeat_bias, batch["seq"], valid)
        if self.cfg.mixtures == 1:
            return hv, -F.cross_entropy(_catalogue_logits(hv, table, offsets).float(), tv, reduction="none")
        comps, log_prior = mos_components(hv, self.mos_proj, self.mos_prior)
        return hv, mos_target_log_prob(comps, log_prior, lambda c: _catalogue_logits(c, table, offsets), tv)

    def _sampled_log_p(self, batch: dict[str, torch.Tensor], valid: torch.Tensor, tv: torch.Tensor,
                       item_log_q: torch.Tensor):
        """Sampled softmax with logQ correction, negatives drawn from q and shared across the batch. Only
        the items the step touches (inputs, targets, negatives) are represented, never the catalogue."""
        neg = torch.multinomial(item_log_q.exp(), self.cfg.n_negatives, replacement=True)
        seq = batch["seq"]
        ids, local_seq, tl, nl = _batch_items(seq, tv, neg)
        rows = self.items.rows(ids)
        hv = self.encode(local_seq, batch["etype"], batch["gap"], batch["user"], rows, _prefix(batch), seq)[valid]
        bias = sampled_offsets(repeat_offsets(self.repeat_bias, seq, valid), tv, neg, self.n_items)
        return hv, -_sampled_softmax(hv, tv, neg, rows[tl], rows[nl], item_log_q, bias, reduction="none")

    def rank(self, h: torch.Tensor, seq: torch.Tensor, table: torch.Tensor):
        """(lo, hi) -> (B, hi - lo) scores of items lo..hi-1 after the last position of `seq` (h = its
        `last_state`, table = `items.table()`): logits h . item + repeat bias, or with a mixture of
        softmaxes or the transition mixture log-probabilities (each normaliser computed once, over
        the whole catalogue, so item chunks compare). Columns 0 and 1 are not masked here."""
        offsets = repeat_offsets(self.repeat_bias, seq)

        def logits(hs: torch.Tensor, lo: int, hi: int) -> torch.Tensor:  # hs (B, d) -> (B, hi - lo)
            s = hs @ table[lo:hi].T
            return s if offsets is None else add_offsets(s, offsets, lo, hi)

        if self.cfg.mixtures > 1:
            net_log_p = mos_ranker(*mos_components(h, self.mos_proj, self.mos_prior), logits, self.n_items)
        elif self.transitions is not None:  # the transition mixture mixes probabilities, not logits
            lse = chunked_logsumexp(lambda lo, hi: logits(h, lo, hi), ITEM_FIRST, self.n_items)
            net_log_p = lambda lo, hi: logits(h, lo, hi).float() - lse.unsqueeze(-1)  # noqa: E731
        else:
            return lambda lo, hi: logits(h, lo, hi)
        if self.transitions is None:
            return net_log_p
        B, L = seq.shape
        pairs, logw = self._transition_mixture(h, seq, torch.arange(B, device=seq.device) * L + (L - 1))
        return transition_ranker(net_log_p, logw, pairs, self.n_items)

    def _transition_mixture(self, h: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor, target=None):
        """Transition pairs and mixture log-weights of positions `pos` (b * L + l) of `seq`, states h."""
        assert self.transitions is not None, "only with model.transition_lags > 0"
        pairs = transition_pairs(self.transitions, self.cfg.transition_lags, seq, pos, target)
        return pairs, transition_log_weights(self.trans_gate(h), self.trans_count_w, pairs.n_ctx)


def _prefix(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The batch's summary of the events before each window (models/data.py), if it has one."""
    return (batch["pre_n"], batch["pre_attr"]) if "pre_n" in batch else None


def _batch_items(seq: torch.Tensor, target: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The items a sampled step touches, renumbered: their catalogue ids (0 first, so local 0 is
    padding), and `seq`, `target` and `neg` in local numbers."""
    pad = torch.zeros(1, dtype=seq.dtype, device=seq.device)
    ids, local = torch.unique(torch.cat([pad, seq.flatten(), target, neg]), return_inverse=True)
    n_seq, n_tgt = seq.numel(), len(target)
    return ids, local[1:1 + n_seq].view_as(seq), local[1 + n_seq:1 + n_seq + n_tgt], local[1 + n_seq + n_tgt:]


def _total(losses: dict[str, torch.Tensor], log_vars: torch.Tensor | None, weights: dict[str, float],
           device: torch.device) -> torch.Tensor:
    """The weighted sum of the losses: fixed `weights` (1 for a loss they do not name), or with
    uncertainty weighting (`log_vars`, one per loss) exp(-s) * loss + s."""
    total = torch.zeros((), device=device)
    for j, (k, v) in enumerate(losses.items()):
        if log_vars is not None:
            total = total + torch.exp(-log_vars[j]) * v + log_vars[j]
        else:
            total = total + weights.get(k, 1.0) * v
    return total


def _catalogue_logits(h: torch.Tensor, table: torch.Tensor, offsets: tuple | None) -> torch.Tensor:
    """(n, N) training logits over the whole catalogue, repeat-bias offsets added, padding/unknown never."""
    logits = h @ table.T
    if offsets is not None:
        # in place: the (positions x catalogue) matrix is the step's biggest; matmul's backward
        # does not need its output, so autograd allows it
        add_offsets(logits, offsets, in_place=True)
    logits[:, :ITEM_FIRST] = -1e9
    return logits


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

