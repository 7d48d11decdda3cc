"""The learned repeat bias (model.repeat_bias, models/repeat_bias.py): which (position, item) pairs
get it, how its offsets are numbered, added and looked up, that every scoring path of the network adds
the same offsets, and that it learns the sign the training targets ask for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from models.net import ModelConfig, SeqRecNet, _sampled_softmax
from models.repeat_bias import (add_offsets, history_pairs, recency_buckets, repeat_offsets,
                                sampled_offsets)
from tests.windows import random_windows

N_ITEMS = 30


def _bucket(k: int) -> int:
    return 0 if k == 0 else int(np.floor(np.log2(k))) + 1


def _reference_pairs(seq: np.ndarray) -> dict[tuple[int, int, int], int]:
    """Brute force: for each position (b, l), each item at or before l -> bucket of its latest occurrence."""
    out = {}
    for b, row in enumerate(seq):
        for l in range(len(row)):
            for j in range(l + 1):
                if row[j] != 0:
                    out[(b, l, int(row[j]))] = _bucket(l - j)  # later j overwrite: the latest wins
    return out


def test_recency_buckets():
    assert recency_buckets(50) == 7  # 0 | 1 | 2-3 | 4-7 | 8-15 | 16-31 | 32-49
    assert [_bucket(k) for k in (0, 1, 2, 3, 4, 7, 8, 49)] == [0, 1, 2, 2, 3, 3, 4, 6]


def test_history_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    seq = random_windows(rng, 40, 12)
    ref = _reference_pairs(seq.numpy())
    pos, item, bucket = history_pairs(seq)
    got = {(int(p) // 12, int(p) % 12, int(i)): int(k) for p, i, k in zip(pos, item, bucket)}
    assert len(got) == len(pos), "a (position, item) pair appears twice"
    assert got == ref
    b, item, bucket = history_pairs(seq, last_only=True)
    last = {(int(x), 11, int(i)): int(k) for x, i, k in zip(b, item, bucket)}
    assert last == {k: v for k, v in ref.items() if k[1] == 11}


def _dense(seq: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(B, L, N_ITEMS) bias per position and item, from the brute-force pairs."""
    out = torch.zeros(*seq.shape, N_ITEMS)
    for (b, l, i), k in _reference_pairs(seq.numpy()).items():
        out[b, l, i] = bias[k]
    return out


def test_offsets_number_rows_as_the_scored_states():
    """Training: one row per trained position, in h[valid] order; ranking: one row per batch row, after
    its last position. Each (row, item) once; nothing when the bias is off."""
    seq = random_windows(np.random.default_rng(5), 10, 12)
    valid = torch.as_tensor(np.random.default_rng(6).random(seq.shape) < 0.6) & (seq > 0)
    bias = torch.linspace(-1.0, 2.0, recency_buckets(12))
    dense = _dense(seq, bias)
    r, item, vals = repeat_offsets(bias, seq, valid)
    assert len(set(zip(r.tolist(), item.tolist()))) == len(r)
    got = torch.zeros(int(valid.sum()), N_ITEMS).index_put_((r, item), vals, accumulate=True)
    assert torch.equal(got, dense[valid])
    r, item, vals = repeat_offsets(bias, seq)
    got = torch.zeros(len(seq), N_ITEMS).index_put_((r, item), vals, accumulate=True)
    assert torch.equal(got, dense[:, -1])
    assert repeat_offsets(None, seq, valid) is None and repeat_offsets(None, seq) is None


def test_offsets_are_added_per_item_range_and_looked_up_per_sample():
    seq = random_windows(np.random.default_rng(7), 6, 12)
    bias = torch.linspace(-1.0, 2.0, recency_buckets(12))
    offsets = repeat_offsets(bias, seq)
    dense = _dense(seq, bias)[:, -1]
    s = torch.randn(len(seq), N_ITEMS)
    assert torch.equal(add_offsets(s, offsets), s + dense)
    for lo, hi in ((0, 5), (5, 17), (17, N_ITEMS)):
        assert torch.allclose(add_offsets(s[:, lo:hi], offsets, lo, hi), (s + dense)[:, lo:hi])
    before = s.clone()
    add_offsets(s, offsets)
    assert torch.equal(s, before), "not in place unless asked"
    add_offsets(s, offsets, in_place=True)
    assert torch.allclose(s, before + dense) and not torch.equal(s, before)
    # a sampled step: each row's target and the shared negatives, without the dense matrix
    target = torch.as_tensor(np.random.default_rng(8).integers(2, N_ITEMS, len(seq)))
    neg = torch.tensor([2, 3, 4, 5, 6, 7, 8, 9, 29, 3])
    at_target, at_neg = sampled_offsets(offsets, target, neg, N_ITEMS)
    assert torch.equal(at_target, dense.gather(1, target[:, None]).squeeze(1))
    assert torch.equal(at_neg, dense[:, neg])
    assert bool((at_neg != 0).any()), "the windows repeat the negatives' items"
    assert sampled_offsets(None, target, neg, N_ITEMS) is None
    none = tuple(torch.zeros(0, dtype=t.dtype) for t in offsets)
    assert torch.equal(sampled_offsets(none, target, neg, N_ITEMS)[1], torch.zeros(len(seq), len(neg)))


def _net(**kw) -> SeqRecNet:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, max_len=12, item_view=False, user_view=False, attr_task=False, engage_task=False,
                      dropout=0.0, **kw)
    net = SeqRecNet(cfg, N_ITEMS, 3, 4, None, None, 1).eval()
    with torch.no_grad():
        net.repeat_bias.copy_(torch.linspace(-2.0, 1.5, len(net.repeat_bias)))
    return net


def _batch(seq: torch.Tensor) -> dict[str, torch.Tensor]:
    target = torch.roll(seq, -1, 1)
    target[:, -1] = 5
    target[seq == 0] = 0
    ones = torch.ones_like(seq)
    return {"seq": seq, "etype": ones, "gap": ones, "user": torch.zeros(len(seq), dtype=torch.long),
            "target": target, "engage": torch.zeros_like(seq)}


def _dense_bias(net: SeqRecNet, seq: torch.Tensor) -> torch.Tensor:
    """(B, L, n_items) from the brute-force pairs."""
    return _dense(seq, net.repeat_bias.detach())


def test_every_scoring_path_adds_the_same_repeat_bias():
    seq = random_windows(np.random.default_rng(1), 16, 12)
    batch = _batch(seq)
    valid = batch["target"] > 0
    with torch.no_grad():
        net = _net(next_loss="full")
        dense = _dense_bias(net, seq)
        table = net.items.table()
        h = net.encode(seq, batch["etype"], batch["gap"], batch["user"], table)
        # full softmax (training)
        logits = h[valid] @ table.T + dense[valid]
        logits[:, :2] = -1e9
        assert torch.allclose(net.loss(batch)["next"], F.cross_entropy(logits, batch["target"][valid]), atol=1e-6)
        # ranking after the last position (evaluation, serving, A/B), whole and in item chunks
        ref = h[:, -1] @ table.T + dense[:, -1]
        rank = net.rank(h[:, -1], seq, table)
        assert torch.allclose(rank(0, N_ITEMS), ref, atol=1e-6)
        for lo, hi in ((0, 7), (7, 20), (20, N_ITEMS)):
            assert torch.allclose(rank(lo, hi), ref[:, lo:hi], atol=1e-6)
        # sampled softmax: the same negatives, the bias looked up per (row, item)
        net = _net(next_loss="sampled", n_negatives=9)
        log_q = torch.log_softmax(torch.randn(N_ITEMS), 0)
        torch.manual_seed(3)
        fast = net(batch, log_q)["next"]
        torch.manual_seed(3)
        neg = torch.multinomial(log_q.exp(), 9, replacement=True)
        tgt = batch["target"][valid]
        dv = dense[valid]
        expect = _sampled_softmax(h[valid], tgt, neg, table[tgt], table[neg], log_q,
                                  (dv.gather(1, tgt[:, None]).squeeze(1), dv[:, neg]))
        assert torch.allclose(fast, expect, atol=1e-6)
    assert not torch.allclose(ref, h[:, -1] @ table.T), "the bias must have changed something"


@pytest.mark.parametrize("repeat_k", [None, 2])
def test_repeat_bias_learns_what_the_targets_do(repeat_k):
    """Targets never in the window push every bucket down; targets that repeat the item k events
    back push bucket(k) up, above the other buckets."""
    rng = np.random.default_rng(2)
    L = 12
    arr = torch.as_tensor(np.stack([rng.permutation(np.arange(2, N_ITEMS))[:L + 1] for _ in range(64)]))
    seq, target = arr[:, :L], arr[:, 1:].clone()  # no item twice in a row of arr
    if repeat_k is not None:
        target[:, :L - 1] = 0  # only the last position trains, and its target repeats
        target[:, L - 1] = seq[:, L - 1 - repeat_k]
    ones = torch.ones_like(seq)
    batch = {"seq": seq, "etype": ones, "gap": ones, "user": torch.zeros(64, dtype=torch.long), "target": target,
             "engage": torch.zeros_like(seq)}
    net = _net(next_loss="full")
    with torch.no_grad():
        net.repeat_bias.zero_()
    opt = torch.optim.Adam([net.repeat_bias], lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        net.loss(batch)["next"].backward()
        opt.step()
    b = net.repeat_bias.detach()
    if repeat_k is None:
        assert (b < -0.5).all(), b
    else:
        assert b[_bucket(repeat_k)] > 0.5 and b[_bucket(repeat_k)] == b.max(), b
