"""Mixture of softmaxes (model.mixtures = K > 1; Yang et al. 2018) for the next-item head.

A dot-product softmax is log-linear in the state, so it cannot say "one of a few fixed successors
OR the user's taste"; a mixture of K softmaxes can:

    p(item | h) = sum_k pi_k(h) softmax(logits(c_k(h)))[item],   c_k(h) = tanh(W_k h),
    pi(h) = softmax(V h)

The two projections are parameters of the network (`SeqRecNet.mos_proj` = W, all K stacked, and
`SeqRecNet.mos_prior` = V); `logits` is the network's own (dot products with the item table plus
the repeat bias), so every component scores items the way a single softmax would. Full softmax only:
each component needs its normaliser over the whole catalogue.

- `mos_components`: the K component states and the log mixture weights;
- `mos_target_log_prob`: log p(target) of trained positions (training);
- `mos_ranker`: log p over items lo..hi-1 in item chunks (ranking), each normaliser computed once;
- `chunked_logsumexp`: that normaliser, also used for a single softmax's log-probabilities.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from seqrec.encoding import ITEM_FIRST  # item indices 0 (padding) and 1 (unknown) are never predicted

LSE_CHUNK = 65_536

# (lo, hi) -> (B, hi - lo): scores of items lo..hi-1
ChunkFn = Callable[[int, int], torch.Tensor]


def mos_components(h: torch.Tensor, proj: nn.Linear, prior: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """MoS components (..., K, d) and log mixture weights (..., K) of states h (..., d)."""
    K = prior.out_features
    comps = torch.tanh(proj(h)).view(*h.shape[:-1], K, h.shape[-1])
    return comps, torch.log_softmax(prior(h).float(), -1)


def mos_target_log_prob(comps: torch.Tensor, log_prior: torch.Tensor, logits: Callable[[torch.Tensor], torch.Tensor],
                    target: torch.Tensor) -> torch.Tensor:
    """(n,) log p(target) under the mixture: `comps` (n, K, d), `log_prior` (n, K), `logits` maps
    component states (n, d) to (n, N) logits over the whole catalogue."""
    K = comps.shape[1]
    log_p = torch.stack([torch.log_softmax(logits(comps[:, k]).float(), -1) for k in range(K)], 1)  # (n, K, N)
    return torch.logsumexp(log_p.gather(2, target.view(-1, 1, 1).expand(-1, K, 1)).squeeze(2) + log_prior, 1)


def mos_ranker(comps: torch.Tensor, log_prior: torch.Tensor, logits: Callable[[torch.Tensor, int, int], torch.Tensor],
           n_items: int) -> ChunkFn:
    """(lo, hi) -> (B, hi - lo) log p of items lo..hi-1 under the mixture: `comps` (B, K, d),
    `log_prior` (B, K), `logits(states, lo, hi)` the logits of items lo..hi-1. Each component's
    normaliser is computed here, once, over the catalogue's predictable items."""
    K = comps.shape[1]

    def component(k: int) -> ChunkFn:
        return lambda lo, hi: logits(comps[:, k], lo, hi)
    lse = torch.stack([chunked_logsumexp(component(k), ITEM_FIRST, n_items) for k in range(K)], 1)  # (B, K)

    def log_p(lo: int, hi: int) -> torch.Tensor:
        return torch.logsumexp(
            torch.stack([logits(comps[:, k], lo, hi) for k in range(K)], 1) + (log_prior - lse).unsqueeze(-1), 1)
    return log_p


def chunked_logsumexp(logits: ChunkFn, lo: int, hi: int, chunk: int = LSE_CHUNK) -> torch.Tensor:
    """logsumexp over items lo..hi-1 of `logits(a, b)` -> (B, b - a), `chunk` items at a time (the
    chunking is fixed here, so a normaliser never depends on the caller's item chunk)."""
    parts = [torch.logsumexp(logits(a, min(hi, a + chunk)).float(), 1) for a in range(lo, hi, chunk)]
    return torch.logsumexp(torch.stack(parts, 1), 1)
