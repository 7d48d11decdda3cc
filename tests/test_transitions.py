"""The transition mixture (model.transition_lags, models/transitions.py): the tables count training
pairs per lag, the module's pairs and weights match a brute force, and every path of the network
(full-softmax training with leave-one-out, sampled-softmax training, ranking in item chunks) computes
the same mixture as a dense reference written out by hand here."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from models.net import ModelConfig, SeqRecNet, TransitionTables, _catalogue_logits, _sampled_softmax
from models.repeat_bias import add_offsets, repeat_offsets
from models.transitions import checked_tables, transition_log_weights, transition_pairs
from tasks.features import transition_tables

N_ITEMS = 14
L = 6


def _sequences(seed: int = 0, n: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(2, N_ITEMS, rng.integers(2, L + 2)) for _ in range(n)]


def _tables(seqs: list[np.ndarray], lags: int) -> TransitionTables:
    z = transition_tables(seqs, N_ITEMS, lags)
    t = torch.as_tensor
    return TransitionTables([t(z[f"lag{k}_indptr"]) for k in range(1, lags + 1)],
                            [t(z[f"lag{k}_indices"]) for k in range(1, lags + 1)],
                            [t(z[f"lag{k}_counts"]) for k in range(1, lags + 1)])


def test_transition_tables_count_each_users_pairs_per_lag():
    seqs = _sequences()
    z = transition_tables(seqs, N_ITEMS, 3)
    for k in (1, 2, 3):
        ref = Counter((int(s[p]), int(s[p + k])) for s in seqs for p in range(len(s) - k))
        ptr, idx, cnt = z[f"lag{k}_indptr"], z[f"lag{k}_indices"], z[f"lag{k}_counts"]
        got = {(i, int(idx[e])): int(cnt[e]) for i in range(N_ITEMS) for e in range(ptr[i], ptr[i + 1])}
        assert got == dict(ref), f"lag {k}"
    assert transition_tables([np.array([5])], N_ITEMS, 1)["lag1_counts"].size == 0  # one event: no pairs


def _net(lags: int, tables: TransitionTables, **kw) -> SeqRecNet:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, max_len=L, item_view=False, user_view=False, attr_task=False, engage_task=False,
                      dropout=0.0, transition_lags=lags, **kw)
    net = SeqRecNet(cfg, N_ITEMS, 3, 4, None, None, 1, tables).eval()
    with torch.no_grad():  # a gate that depends on the state and on the counts
        net.trans_gate.weight.normal_(0, 0.5)
        net.trans_count_w.copy_(torch.linspace(-0.3, 0.4, lags))
    return net


def _batch(seqs: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Each sequence as one left-padded training window (every target is a counted transition)."""
    seq = np.zeros((len(seqs), L), np.int64)
    tgt = np.zeros((len(seqs), L), np.int64)
    for b, s in enumerate(seqs):
        s = s[-(L + 1):]
        seq[b, L - len(s) + 1:] = s[:-1]
        tgt[b, L - len(s) + 1:] = s[1:]
    seq, tgt = torch.as_tensor(seq), torch.as_tensor(tgt)
    ones = torch.ones_like(seq)
    return {"seq": seq, "etype": ones, "gap": ones, "user": torch.zeros(len(seq), dtype=torch.long),
            "target": tgt, "engage": torch.zeros_like(seq)}


def _dense_lag_dists(seqs, lags: int, contexts: list[list[int]], targets: list[int] | None):
    """Brute force: per row, per lag, (n, {item: c / n}) with leave-one-out when targets are given."""
    counts = [Counter((int(s[p]), int(s[p + k])) for s in seqs for p in range(len(s) - k)) for k in range(1, lags + 1)]
    out = []
    for r, ctx in enumerate(contexts):
        row = []
        for d in range(lags):
            c = {j: v for (i, j), v in counts[d].items() if i == ctx[d]} if ctx[d] > 0 else {}
            if targets is not None and ctx[d] > 0:
                c[targets[r]] = c.get(targets[r], 0) - 1
            n = sum(c.values())
            row.append((n, {j: v / n for j, v in c.items() if v > 0} if n > 0 else {}))
        out.append(row)
    return out


def _dense_mixture(net: SeqRecNet, h: torch.Tensor, log_p_net: torch.Tensor, dists) -> torch.Tensor:
    """log(w0 * p_net + sum_d w_d * P_d) for every item, weights computed by hand."""
    lags = net.cfg.transition_lags
    out = torch.empty_like(log_p_net)
    for r, row in enumerate(dists):
        g = net.trans_gate(h[r]).double()
        logits = [g[0]] + [g[1 + d] + net.trans_count_w[d].double() * np.log(max(row[d][0], 1))
                           if row[d][0] > 0 else torch.tensor(-np.inf, dtype=torch.double) for d in range(lags)]
        w = torch.softmax(torch.stack(logits), 0)
        p = w[0] * log_p_net[r].double().exp()
        for d in range(lags):
            for j, v in row[d][1].items():
                p[j] += w[1 + d] * v
        out[r] = torch.log(p).float()
    return out


@pytest.mark.parametrize("lags", [1, 2])
def test_every_path_computes_the_same_mixture(lags):
    seqs = _sequences()
    tables = _tables(seqs, lags)
    batch = _batch(seqs)
    seq, valid = batch["seq"], batch["target"] > 0
    tv = batch["target"][valid]
    b, l = valid.nonzero(as_tuple=True)
    train_ctx = [[int(seq[bi, li - d]) if li - d >= 0 else 0 for d in range(lags)] for bi, li in zip(b, l)]
    with torch.no_grad():
        net = _net(lags, tables, next_loss="full")
        table = net.items.table()
        h = net.encode(seq, batch["etype"], batch["gap"], batch["user"], table)
        # full softmax training: leave-one-out counts
        logits = _catalogue_logits(h[valid], table, repeat_offsets(net.repeat_bias, seq, valid))
        ref = _dense_mixture(net, h[valid], torch.log_softmax(logits, 1),
                             _dense_lag_dists(seqs, lags, train_ctx, tv.tolist()))
        expect = -ref.gather(1, tv[:, None]).mean()
        assert torch.allclose(net.loss(batch)["next"], expect, atol=1e-5)
        # ranking after the last position: all counts, whole catalogue and item chunks
        last = h[:, -1]
        logits = last @ table.T
        logits[:, :2] = -1e9
        logits = add_offsets(logits, repeat_offsets(net.repeat_bias, seq))
        ctx = [[int(seq[r, L - 1 - d]) for d in range(lags)] for r in range(len(seq))]
        ref = _dense_mixture(net, last, torch.log_softmax(logits, 1), _dense_lag_dists(seqs, lags, ctx, None))
        rank = net.rank(last, seq, table)
        got = rank(0, N_ITEMS)
        assert torch.allclose(got[:, 2:], ref[:, 2:], atol=1e-5)
        for lo, hi in ((0, 5), (5, 9), (9, N_ITEMS)):
            assert torch.allclose(rank(lo, hi)[:, max(lo, 2) - lo:],
                                  got[:, max(lo, 2):hi], atol=1e-6)
        # sampled softmax training: the network's sampled log p(target) in the same leave-one-out mixture
        net = _net(lags, tables, next_loss="sampled", n_negatives=7)
        log_q = torch.log_softmax(torch.randn(N_ITEMS), 0)
        torch.manual_seed(3)
        fast = net(batch, log_q)["next"]
        torch.manual_seed(3)
        neg = torch.multinomial(log_q.exp(), 7, replacement=True)
        table = net.items.table()
        h = net.encode(seq, batch["etype"], batch["gap"], batch["user"], table)
        dense = torch.zeros(int(valid.sum()), N_ITEMS)
        r, i, v = repeat_offsets(net.repeat_bias, seq, valid)
        dense.index_put_((r, i), v, accumulate=True)
        log_p_t = -_sampled_softmax(h[valid], tv, neg, table[tv], table[neg], log_q,
                                    (dense.gather(1, tv[:, None]).squeeze(1), dense[:, neg]), reduction="none")
        # the dense mixture, evaluated at the target with the network's sampled estimate in place of p_net
        placeholder = torch.full((len(tv), N_ITEMS), -np.inf)
        placeholder[torch.arange(len(tv)), tv] = log_p_t
        ref = _dense_mixture(net, h[valid], placeholder, _dense_lag_dists(seqs, lags, train_ctx, tv.tolist()))
        assert torch.allclose(fast, -ref.gather(1, tv[:, None]).mean(), atol=1e-5)


@pytest.mark.parametrize("loo", [False, True])
def test_pairs_are_each_context_items_successors(loo):
    """transition_pairs against the brute force: per position and lag, the successors of the item
    d events back with c / n, and n; leave-one-out takes the position's own transition out."""
    seqs = _sequences(1)
    tables = _tables(seqs, 3)
    batch = _batch(seqs)
    seq, valid = batch["seq"], batch["target"] > 0
    pos = valid.flatten().nonzero().squeeze(1)
    tv = batch["target"][valid]
    pairs = transition_pairs(tables, 2, seq, pos, tv if loo else None)  # the tables may have more lags
    b, l = pos // L, pos % L
    ctx = [[int(seq[bi, li - d]) if li - d >= 0 else 0 for d in range(2)] for bi, li in zip(b, l)]
    ref = _dense_lag_dists(seqs, 2, ctx, tv.tolist() if loo else None)
    assert pairs.n_ctx.shape == (len(pos), 2)
    for r, row in enumerate(ref):
        for d, (n, dist) in enumerate(row):
            assert pairs.n_ctx[r, d] == max(n, 0)
            sel = (pairs.rows == r) & (pairs.lag == d)
            got = dict(zip(pairs.item[sel].tolist(), pairs.p[sel].tolist()))
            assert got.keys() == dist.keys() and all(abs(got[j] - dist[j]) < 1e-6 for j in dist)


def test_mixture_weights_come_from_the_gate_and_the_counts():
    g = torch.tensor([[0.5, 0.1, -0.2], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    n_ctx = torch.tensor([[4.0, 1.0], [0.0, 9.0], [0.0, 0.0]])
    count_w = torch.tensor([0.3, -0.5])
    logw = transition_log_weights(g, count_w, n_ctx)
    for r in range(3):
        logits = [g[r, 0]] + [g[r, 1 + d] + count_w[d] * np.log(max(float(n_ctx[r, d]), 1.0))
                              if n_ctx[r, d] > 0 else torch.tensor(-np.inf) for d in range(2)]
        assert torch.allclose(logw[r].exp(), torch.softmax(torch.stack(logits).float(), 0), atol=1e-6)
    assert logw[1, 1] == -np.inf and logw[2, 0] == 0.0, "no successors: the network alone"


def test_a_transition_mixture_needs_tables_with_enough_lags():
    tables = _tables(_sequences(), 1)
    assert checked_tables(tables, 0) is None and checked_tables(tables, 1) is tables
    tables = _tables(_sequences(), 1)
    with pytest.raises(ValueError, match="transition_lags=2 needs transition tables of that many lags, the views have 1"):
        _net(2, tables)
    with pytest.raises(ValueError, match="the views have 0"):
        _net(1, None)


def test_tables_move_to_a_device_once_with_their_totals():
    """(No GPU here: the meta device stands in for the copy, it has shapes but no values.)"""
    tables = _tables(_sequences(), 2)
    assert torch.equal(tables.totals[0], torch.bincount(torch.repeat_interleave(
        torch.arange(N_ITEMS), tables.indptr[0][1:] - tables.indptr[0][:-1]), tables.counts[0], N_ITEMS))
    moved = tables.on(torch.device("meta"))
    assert moved is tables.on(torch.device("meta")) and tables.on(torch.device("cpu")) is tables
    for ts in (moved.indptr, moved.indices, moved.counts, moved.totals):
        assert all(t.device.type == "meta" for t in ts)
    assert [t.shape for t in moved.totals] == [t.shape for t in tables.totals]
