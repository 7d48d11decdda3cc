"""The learned repeat bias (model.repeat_bias): which (position, item) pairs get it, that every
scoring path adds the same offsets, and that it learns the sign the training targets ask for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from models.net import ModelConfig, SeqRecNet, _sampled_softmax, history_pairs, recency_buckets

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


def _random_windows(rng: np.random.Generator, B: int, L: int) -> torch.Tensor:
    seq = np.zeros((B, L), np.int64)
    for b in range(B):
        n = rng.integers(1, L + 1)
        seq[b, L - n:] = rng.integers(2, 9, n)  # few distinct items: many repeats
    return torch.as_tensor(seq)


def test_recency_buckets():
    assert recency_buckets(50) == 7  # 0 | 1 | 2-3 | 4-7 | 8-15 | 16-31 | 32-49
    assert [_bucket(k) for k in (0, 1, 2, 3, 4, 7, 8, 49)] == [0, 1, 2, 2, 3, 3, 4, 6]


def test_history_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    seq = _random_windows(rng, 40, 12)
    ref = _reference_pairs(seq.numpy())
    pos, item, bucket = history_pairs(seq)
    got = {(int(p) // 12, int(p) % 12, int(i)): int(k) for p, i, k in zip(pos, item, bucket)}
    assert len(got) == len(pos), "a (position, item) pair appears twice"
    assert got == ref
    b, item, bucket = history_pairs(seq, last_only=True)
    last = {(int(x), 11, int(i)): int(k) for x, i, k in zip(b, item, bucket)}
    assert last == {k: v for k, v in ref.items() if k[1] == 11}


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
    out = torch.zeros(*seq.shape, N_ITEMS)
    for (b, l, i), k in _reference_pairs(seq.numpy()).items():
        out[b, l, i] = net.repeat_bias[k]
    return out


def test_every_scoring_path_adds_the_same_repeat_bias():
    seq = _random_windows(np.random.default_rng(1), 16, 12)
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
        assert torch.allclose(net.rank_scores(h[:, -1], seq, table), ref, atol=1e-6)
        for lo, hi in ((0, 7), (7, 20), (20, N_ITEMS)):
            assert torch.allclose(net.rank_scores(h[:, -1], seq, table, lo, hi), ref[:, lo:hi], atol=1e-6)
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


def test_mixture_of_softmaxes_scores_are_its_log_probabilities():
    """With model.mixtures > 1, training NLL and ranking scores come from one distribution:
    log sum_k pi_k softmax_k (repeat bias inside each component), in chunks or whole."""
    seq = _random_windows(np.random.default_rng(4), 16, 12)
    batch = _batch(seq)
    valid = batch["target"] > 0
    net = _net(next_loss="full", mixtures=3)
    with torch.no_grad():
        dense = _dense_bias(net, seq)
        table = net.items.table()
        h = net.encode(seq, batch["etype"], batch["gap"], batch["user"], table)
        comps, log_prior = net._mixture(h)  # (B, L, K, d), (B, L, K)
        z = torch.einsum("blkd,nd->blkn", comps, table) + dense.unsqueeze(2)
        z[..., :2] = -torch.inf
        log_p = torch.logsumexp(torch.log_softmax(z, -1) + log_prior.unsqueeze(-1), 2)  # (B, L, N)
        assert torch.allclose(log_p[..., 2:].exp().sum(-1), torch.ones(seq.shape), atol=1e-5)
        nll = -log_p[valid].gather(1, batch["target"][valid][:, None]).mean()
        assert torch.allclose(net.loss(batch)["next"], nll, atol=1e-5)
        rank = net.ranker(h[:, -1], seq, table)
        assert torch.allclose(rank(2, N_ITEMS), log_p[:, -1, 2:], atol=1e-5)
        assert torch.allclose(torch.cat([rank(0, 9), rank(9, N_ITEMS)], 1)[:, 2:], log_p[:, -1, 2:], atol=1e-5)
    with pytest.raises(ValueError, match="mixtures=3 needs the full softmax"):
        _net(next_loss="sampled", mixtures=3)
