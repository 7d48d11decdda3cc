"""The mixture of softmaxes (model.mixtures, models/mos.py): training NLL and ranking scores come from
one distribution, log sum_k pi_k softmax_k, computed whole or in item chunks, by the module's functions
and by the network that composes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.mos import chunked_logsumexp, mos_components, mos_ranker, mos_target_log_prob
from models.net import ModelConfig, SeqRecNet
from models.repeat_bias import repeat_offsets
from tests.windows import random_windows

N_ITEMS = 30
FIRST = 2  # items 0 (padding) and 1 (unknown) are never predicted


def _dense_log_p(comps: torch.Tensor, log_prior: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(n, N) log sum_k pi_k softmax_k over the predictable items, -inf at 0 and 1, written out."""
    z = torch.einsum("nkd,md->nkm", comps, table).double()
    z[..., :FIRST] = -torch.inf
    p = (torch.softmax(z, -1) * log_prior.double().exp().unsqueeze(-1)).sum(1)
    return p.log().float()


def test_components_are_the_projected_states_and_a_prior():
    torch.manual_seed(0)
    h = torch.randn(5, 8)
    proj, prior = nn.Linear(8, 3 * 8), nn.Linear(8, 3)
    comps, log_prior = mos_components(h, proj, prior)
    assert comps.shape == (5, 3, 8) and log_prior.shape == (5, 3)
    assert torch.equal(comps[:, 1], torch.tanh(proj(h))[:, 8:16])
    assert torch.allclose(log_prior.exp().sum(-1), torch.ones(5))
    assert torch.allclose(log_prior, torch.log_softmax(prior(h), -1))
    comps3, _ = mos_components(h.view(5, 1, 8).expand(5, 4, 8), proj, prior)  # any leading shape
    assert comps3.shape == (5, 4, 3, 8) and torch.allclose(comps3[:, 2], comps)


def test_training_and_ranking_compute_the_same_mixture():
    torch.manual_seed(1)
    comps, log_prior = torch.randn(6, 3, 8), torch.log_softmax(torch.randn(6, 3), -1)
    table = torch.randn(N_ITEMS, 8)
    ref = _dense_log_p(comps, log_prior, table)
    assert torch.allclose(ref[:, FIRST:].exp().sum(-1), torch.ones(6), atol=1e-5)

    def train_logits(c: torch.Tensor) -> torch.Tensor:
        z = c @ table.T
        z[:, :FIRST] = -1e9
        return z

    target = torch.tensor([2, 5, 29, 7, 7, 11])
    got = mos_target_log_prob(comps, log_prior, train_logits, target)
    assert torch.allclose(got, ref.gather(1, target[:, None]).squeeze(1), atol=1e-5)
    rank = mos_ranker(comps, log_prior, lambda c, lo, hi: c @ table[lo:hi].T, N_ITEMS)
    assert torch.allclose(rank(FIRST, N_ITEMS), ref[:, FIRST:], atol=1e-5)
    chunks = torch.cat([rank(0, 9), rank(9, 10), rank(10, N_ITEMS)], 1)
    assert torch.allclose(chunks[:, FIRST:], ref[:, FIRST:], atol=1e-5)
    # one component with weight 1 is a plain softmax
    one = mos_target_log_prob(comps[:, :1], torch.zeros(6, 1), train_logits, target)
    assert torch.allclose(one, torch.log_softmax(train_logits(comps[:, 0]), -1).gather(1, target[:, None])[:, 0])


@pytest.mark.parametrize("chunk", [1, 4, 7, 65_536])
def test_chunked_logsumexp_is_the_whole_normaliser(chunk):
    torch.manual_seed(2)
    z = torch.randn(4, N_ITEMS) * 5
    got = chunked_logsumexp(lambda a, b: z[:, a:b], FIRST, N_ITEMS, chunk)
    assert torch.allclose(got, torch.logsumexp(z[:, FIRST:], 1), atol=1e-5)


def test_network_scores_are_its_log_probabilities():
    """With model.mixtures > 1, the network's training NLL and ranking scores come from one
    distribution: log sum_k pi_k softmax_k (repeat bias inside each component), in chunks or whole."""
    seq = random_windows(np.random.default_rng(4), 16, 12)
    target = torch.roll(seq, -1, 1)
    target[:, -1] = 5
    target[seq == 0] = 0
    ones = torch.ones_like(seq)
    batch = {"seq": seq, "etype": ones, "gap": ones, "user": torch.zeros(len(seq), dtype=torch.long),
             "target": target, "engage": torch.zeros_like(seq)}
    valid = target > 0
    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, max_len=12, item_view=False, user_view=False, attr_task=False, engage_task=False,
                      dropout=0.0, next_loss="full", mixtures=3)
    net = SeqRecNet(cfg, N_ITEMS, 3, 4, None, None, 1).eval()
    with torch.no_grad():
        net.repeat_bias.copy_(torch.linspace(-2.0, 1.5, len(net.repeat_bias)))
        r, i, v = repeat_offsets(net.repeat_bias, seq, torch.ones_like(valid))  # every position
        dense = torch.zeros(seq.numel(), N_ITEMS).index_put_((r, i), v, accumulate=True).view(*seq.shape, N_ITEMS)
        table = net.items.table()
        h = net.encode(seq, batch["etype"], batch["gap"], batch["user"], table)
        comps, log_prior = mos_components(h, net.mos_proj, net.mos_prior)  # (B, L, K, d), (B, L, K)
        z = torch.einsum("blkd,nd->blkn", comps, table) + dense.unsqueeze(2)
        z[..., :2] = -torch.inf
        log_p = torch.logsumexp(torch.log_softmax(z, -1) + log_prior.unsqueeze(-1), 2)  # (B, L, N)
        assert torch.allclose(log_p[..., 2:].exp().sum(-1), torch.ones(seq.shape), atol=1e-5)
        nll = -log_p[valid].gather(1, target[valid][:, None]).mean()
        assert torch.allclose(net.loss(batch)["next"], nll, atol=1e-5)
        rank = net.rank(h[:, -1], seq, table)
        assert torch.allclose(rank(2, N_ITEMS), log_p[:, -1, 2:], atol=1e-5)
        assert torch.allclose(torch.cat([rank(0, 9), rank(9, N_ITEMS)], 1)[:, 2:], log_p[:, -1, 2:], atol=1e-5)
    with pytest.raises(ValueError, match="mixtures=3 needs the full softmax"):
        SeqRecNet(cfg.model_copy(update={"next_loss": "sampled"}), N_ITEMS, 3, 4, None, None, 1)
