"""Full-ranking metrics (DESIGN.md section 4), vectorised in torch, batched over users and chunked
over the catalogue.

rank = number of catalogue items scored strictly higher than the target (items excluded by
`exclude_seen` and the padding/unknown indices never count). HR@K (= Recall@K with one target),
NDCG@K = 1/log2(rank+2), MRR@K = 1/(rank+1), each 0 when rank >= K; coverage@10 over all users.

Item chunks: a (users x items) score matrix for a 1M-item catalogue is 2 GB per 512 users, so the
catalogue is scored `item_chunk` items at a time and only each user's best `max(KS)` scores and
their item ids are carried from chunk to chunk. That is enough to be exact: a rank below max(KS)
is the number of carried scores above the target's, and a rank at or above it scores 0 on every
metric anyway. Carrying the best scores (instead of counting per chunk) means the target's score
need not be known before its own chunk, and it is always read from the very score its rivals are
compared with. Ties keep the lower item index, so the top 10 merged across chunks is the same set
as one pass over the catalogue (torch.topk leaves the order of ties unspecified: before chunking,
coverage@10 of tied baselines depended on it, e.g. Markov on ml-100k validation 0.4923 -> 0.4929).
Items left at -inf (masked) are no recommendation and never count for coverage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch

KS = (5, 10, 20)
COVERAGE_K = 10
# one chunk for catalogues up to 65,536 items (ml-100k and the synthetic test sets: results as
# before chunking); 512 users x 65,536 items = 128 MB of float32 scores per chunk
DEFAULT_ITEM_CHUNK = 65_536

# (lo, hi) -> (B, hi - lo) float scores of items lo..hi-1, a tensor of its own (masked in place)
ChunkScores = Callable[[int, int], torch.Tensor]
BatchScorer = Callable[[np.ndarray], ChunkScores]  # user rows -> their chunk scorer


def mask_scores(scores: torch.Tensor, seen: list[np.ndarray] | None, targets: torch.Tensor) -> torch.Tensor:
    """-inf for padding/unknown and (optionally) items the user already interacted with.

    The target itself is never masked, so a repeat interaction is still rankable."""
    scores = scores.clone().float()
    scores[:, :2] = -torch.inf
    if seen is not None:
        rows = np.repeat(np.arange(len(seen)), [len(s) for s in seen])
        cols = np.concatenate(seen) if len(seen) else np.zeros(0, np.int64)
        if len(cols):
            tgt_scores = scores.gather(1, targets[:, None])
            scores[torch.as_tensor(rows), torch.as_tensor(cols, dtype=torch.long)] = -torch.inf
            scores.scatter_(1, targets[:, None], tgt_scores)
    return scores


def ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    tgt = scores.gather(1, targets[:, None])
    return (scores > tgt).sum(1)


def per_user_metrics(rank: torch.Tensor, ks: Iterable[int] = KS) -> dict[str, np.ndarray]:
    r = rank.double()
    out = {}
    for k in ks:
        hit = r < k
        out[f"hr@{k}"] = hit.double().numpy()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).numpy()
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / (r + 1.0), torch.zeros_like(r)).numpy()
    return out


def item_chunks(n_items: int, chunk: int, min_width: int = 1) -> list[tuple[int, int]]:
    """[lo, hi) bounds of `chunk` items; a last chunk narrower than `min_width` joins the one before."""
    if chunk < 1:
        raise ValueError(f"item chunk must be >= 1, got {chunk}")
    edges = [*range(0, n_items, chunk), n_items]
    if len(edges) > 2 and edges[-1] - edges[-2] < min_width:
        del edges[-2]
    return list(zip(edges[:-1], edges[1:]))


def top_k(values: torch.Tensor, items: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the k largest values and their item ids, ties resolved towards the earlier column.

    Columns must be in increasing item order; the result keeps that order, so top_k of concatenated
    per-chunk winners (in chunk order) is the top_k of the whole row, ties included. No NaNs."""
    if values.shape[1] <= k:
        return values, items
    # k+1 values tell whether the k-th value continues past the cut; if not, topk's set is the only one
    tv, ti = values.topk(k + 1, dim=1)
    cols = ti[:, :k]
    crowded = (tv[:, k] == tv[:, k - 1]).nonzero().squeeze(1)
    if len(crowded):  # more items share the k-th value than fit: the earliest columns win
        v, kth = values[crowded], tv[crowded, k - 1:k]
        tie = v == kth
        need = k - (tv[crowded, :k] > kth).sum(1, keepdim=True)
        keep = (v > kth) | (tie & (tie.cumsum(1) <= need))
        cols = cols.clone()
        cols[crowded] = keep.nonzero()[:, 1].view(len(crowded), k)  # row-major: k per row
    cols = cols.sort(1).values
    return values.gather(1, cols), items.gather(1, cols)


def _seen_pairs(seen: list[np.ndarray] | None, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor] | None:
    if seen is None:
        return None
    rows = [seen[i] for i in idx]
    r = np.repeat(np.arange(len(rows)), [len(s) for s in rows])
    c = np.concatenate(rows).astype(np.int64) if len(rows) else np.zeros(0, np.int64)
    return torch.as_tensor(r, dtype=torch.long), torch.as_tensor(c, dtype=torch.long)


def _masked_chunk(s: torch.Tensor, lo: int, hi: int, pairs: tuple[torch.Tensor, torch.Tensor] | None,
                  tgt: torch.Tensor, tgt_score: torch.Tensor) -> torch.Tensor:
    """mask_scores on items lo..hi-1, in place; records the (unmasked) score of each target found here."""
    # a NaN score (a diverged model) never ranks above anything, and a NaN target ranks last
    torch.nan_to_num_(s, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    if lo < 2:
        s[:, : 2 - lo] = -torch.inf
    here = ((tgt >= lo) & (tgt < hi)).nonzero().squeeze(1)
    own = s[here, tgt[here] - lo]
    tgt_score[here] = own
    if pairs is not None:
        r, c = pairs
        sel = (c >= lo) & (c < hi)
        if sel.any():
            s[r[sel], c[sel] - lo] = -torch.inf
            s[here, tgt[here] - lo] = own  # the target is never masked (a repeat is still rankable)
    return s


def rank_users(score_fn: BatchScorer, n_users: int, targets: np.ndarray, seen: list[np.ndarray] | None,
               n_items: int, batch_size: int = 512, item_chunk: int = DEFAULT_ITEM_CHUNK,
               ks: Iterable[int] = KS, min_chunk: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-user metric arrays and each user's top-10 item ids (n_users, <=10; -1 where fewer than 10
    items are left unmasked), the catalogue scored in chunks (module docstring). `min_chunk`: item_chunks."""
    ks = tuple(ks)
    carry = max(max(ks), COVERAGE_K)
    chunks = item_chunks(n_items, item_chunk, min_chunk)
    per: dict[str, list[np.ndarray]] = {}
    top: list[np.ndarray] = []
    for start in range(0, n_users, batch_size):
        idx = np.arange(start, min(n_users, start + batch_size))
        chunk_scores = score_fn(idx)
        tgt = torch.as_tensor(targets[idx], dtype=torch.long)
        pairs = _seen_pairs(seen, idx)
        tgt_score = torch.full((len(idx),), torch.nan)
        best_v = torch.empty(len(idx), 0)
        best_i = torch.empty(len(idx), 0, dtype=torch.long)
        for lo, hi in chunks:
            s = _masked_chunk(chunk_scores(lo, hi).float().cpu(), lo, hi, pairs, tgt, tgt_score)
            v, i = top_k(s, torch.arange(lo, hi).expand(len(idx), -1), carry)
            best_v, best_i = top_k(torch.cat([best_v, v], 1), torch.cat([best_i, i], 1), carry)
        rank = (best_v > tgt_score[:, None]).sum(1)  # exact below `carry`, `carry` otherwise
        for k, v in per_user_metrics(rank, ks).items():
            per.setdefault(k, []).append(v)
        v, i = top_k(best_v, best_i, COVERAGE_K)
        top.append(i.masked_fill(v == -torch.inf, -1).numpy())  # a masked item is no recommendation
    arrays = {k: np.concatenate(v) for k, v in per.items()}
    return arrays, (np.concatenate(top) if top else np.zeros((0, COVERAGE_K), np.int64))


def summarise(arrays: dict[str, np.ndarray], top: np.ndarray, n_items: int) -> dict:
    """Mean metrics, coverage@10 (distinct top-10 items over the catalogue) and the user count."""
    means = {k: float(v.mean()) for k, v in arrays.items()}
    means["coverage@10"] = float(len(np.setdiff1d(top, [-1])) / max(1, n_items - 2)) if len(top) else 0.0
    means["users"] = int(len(top))
    return means


def evaluate_ranking_chunked(score_fn: BatchScorer, n_users: int, targets: np.ndarray,
                             seen: list[np.ndarray] | None, n_items: int, batch_size: int = 512,
                             item_chunk: int = DEFAULT_ITEM_CHUNK, min_chunk: int = 1) -> tuple[dict, dict]:
    """score_fn(user rows) -> chunk scorer (lo, hi) -> (B, hi-lo). Returns (mean metrics, per-user arrays)."""
    arrays, top = rank_users(score_fn, n_users, targets, seen, n_items, batch_size, item_chunk, min_chunk=min_chunk)
    return summarise(arrays, top, n_items), arrays


def evaluate_ranking(score_fn: Callable[[np.ndarray], torch.Tensor], n_users: int, targets: np.ndarray,
                     seen: list[np.ndarray] | None, n_items: int, batch_size: int = 512,
                     item_chunk: int | None = None) -> tuple[dict, dict]:
    """score_fn(batch_indices) -> (B, n_items) scores (baselines, rescored bundles): the whole row
    is scored at once and, by default, ranked as one chunk."""
    def chunked(idx: np.ndarray) -> ChunkScores:
        s = score_fn(idx)
        return lambda lo, hi: s[:, lo:hi].float().clone()  # a copy: the ranking masks it in place

    return evaluate_ranking_chunked(chunked, n_users, targets, seen, n_items, batch_size,
                                    item_chunk or max(1, n_items))


def f1_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The score threshold with the highest F1 on these labels (0.5 when there is no positive).
    For sparse multi-label targets (a movie has 1-3 of 19 genres) a fixed 0.5 predicts almost
    nothing positive; the evaluation picks the threshold on validation and applies it to test."""
    from sklearn.metrics import precision_recall_curve

    y_true = np.asarray(y_true).astype(int).ravel()
    if not y_true.any():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y_true, np.asarray(y_score).ravel())
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def binary_metrics(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    y_true = np.asarray(y_true).astype(int).ravel()
    y_score = np.asarray(y_score).ravel()
    pred = (y_score >= threshold).astype(int)
    out = {"precision": float(precision_score(y_true, pred, zero_division=0)),
           "recall": float(recall_score(y_true, pred, zero_division=0)),
           "f1": float(f1_score(y_true, pred, zero_division=0))}
    out["auc"] = float(roc_auc_score(y_true, y_score)) if 0 < y_true.sum() < len(y_true) else float("nan")
    out["threshold"] = float(threshold)
    return out
