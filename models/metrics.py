"""Full-ranking metrics, vectorised in torch, batched over users and chunked
over the catalogue.

Ties never help the target. With `higher` catalogue items scored strictly above the target and
`ties` others scored exactly as the target (items excluded by `exclude_seen` and the padding/unknown
indices never count), the target's position is uniform over higher .. higher + ties (random
tie-breaking; expected rank higher + ties/2), and each metric is its expectation over those
positions: HR@K (= Recall@K with one target) of position r is [r < K], NDCG@K 1/log2(r+2), MRR@K
1/(r+1). A model whose scores are all equal therefore scores like a random ranking, not perfectly;
integer-count baselines (Pop, Markov) get no credit for their ties either. A target whose score is
not finite ranks last. coverage@10 over all users.

Broken scorers get an error, not a number: scores must be finite (NaN or +-inf raises
DegenerateScoresError, naming how many users it hit), except that a re-scored champion may leave
-inf on items it never saw (`allow_neg_inf`: they cannot be recommended). With `reject_constant`
(the trained model's evaluation) a user whose every unmasked item has the same score is an error
too: a float network never produces that unless it has collapsed.

Item chunks: a (users x items) score matrix for a 1M-item catalogue is 2 GB per 512 users, so the
catalogue is scored `item_chunk` items at a time and only each user's best `max(KS)` scores and
their item ids are carried from chunk to chunk. That is enough to be exact: a rank below max(KS)
is the number of carried scores above the target's, and a rank at or above it scores 0 on every
metric anyway. Carrying the best scores (instead of counting per chunk) means the target's score
need not be known before its own chunk, and it is always read from the very score its rivals are
compared with. Ties need an exact count: chunks at or after the target's are counted directly;
the chunks before it are known through their carried best scores, which is exact unless the carry
is full of the target's own score; only then (degenerate, heavily tied scores) are those chunks
scored again and counted. Ties keep the lower item index, so the top 10 merged across chunks is the same set
as one pass over the catalogue (torch.topk leaves the order of ties unspecified: before chunking,
coverage@10 of tied baselines depended on it, e.g. Markov on ml-100k validation 0.4923 -> 0.4929).
Items left at -inf (masked) are no recommendation and never count for coverage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from seqrec.errors import SeqrecError

KS = (5, 10, 20)
COVERAGE_K = 10
# one chunk for catalogues up to 65,536 items (ml-100k and the synthetic test sets: results as
# before chunking); 512 users x 65,536 items = 128 MB of float32 scores per chunk
DEFAULT_ITEM_CHUNK = 65_536

# (lo, hi) -> (B, hi - lo) float scores of items lo..hi-1, a tensor of its own (masked in place)
ChunkScores = Callable[[int, int], torch.Tensor]
BatchScorer = Callable[[np.ndarray], ChunkScores]  # user rows -> their chunk scorer


class DegenerateScoresError(SeqrecError):
    """A scorer is broken, not just bad: NaN/infinite scores (diverged weights) or the same score for
    every item. It gets an error, never a number (a constant model would otherwise rank as random)."""


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


def ranks(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over whole rows: (items strictly above the target, other items tied with it); a
    target whose score is not finite ranks last (higher = the row width, no ties)."""
    tgt = scores.gather(1, targets[:, None])
    higher = (scores > tgt).sum(1)
    ties = (scores == tgt).sum(1) - 1
    bad = ~torch.isfinite(tgt[:, 0])
    return higher.masked_fill(bad, scores.shape[1]), ties.masked_fill(bad, 0)


def _expected(higher: torch.Tensor, ties: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Mean of gain[r] (0 from len(gain) on) over positions r = higher .. higher + ties."""
    k = len(gain)
    cum = torch.cat([gain.new_zeros(1), gain.cumsum(0)])  # cum[n] = sum of gain[:n]
    lo = higher.clamp(max=k)
    hi = (higher + ties + 1).clamp(max=k)
    return (cum[hi] - cum[lo]) / (ties + 1).double()


def per_user_metrics(higher: torch.Tensor, ties: torch.Tensor | None = None,
                     ks: Iterable[int] = KS) -> dict[str, np.ndarray]:
    """HR/NDCG/MRR@k per user, in expectation over random tie-breaking (module docstring)."""
    higher = higher.long()
    ties = torch.zeros_like(higher) if ties is None else ties.long()
    out = {}
    for k in ks:
        pos = torch.arange(k, dtype=torch.float64)
        out[f"hr@{k}"] = _expected(higher, ties, torch.ones(k, dtype=torch.float64)).numpy()
        out[f"ndcg@{k}"] = _expected(higher, ties, 1.0 / torch.log2(pos + 2.0)).numpy()
        out[f"mrr@{k}"] = _expected(higher, ties, 1.0 / (pos + 1.0)).numpy()
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


def check_finite(s: torch.Tensor, lo: int, allow_neg_inf: bool) -> None:
    """Raise when a chunk of raw scores (items lo.. ; padding/unknown ignored) is not finite."""
    body = s[:, max(0, 2 - lo):]
    bad = torch.isnan(body) | (body == torch.inf)
    if not allow_neg_inf:
        bad |= body == -torch.inf
    if bad.any():
        rows = bad.any(1)
        kinds = [name for name, m in (("NaN", torch.isnan(body)), ("+inf", body == torch.inf),
                                      ("-inf", body == -torch.inf)) if (m & bad).any()]
        raise DegenerateScoresError(
            f"the scorer produced non-finite scores ({'/'.join(kinds)}) for {int(rows.sum())} of {len(s)} users "
            f"in a batch: its weights have diverged. It is not evaluated (a broken model must not get a number); "
            f"retrain with a lower train.lr, a smaller train.clip_norm or a longer train.warmup_epochs")


def _masked_chunk(s: torch.Tensor, lo: int, hi: int, pairs: tuple[torch.Tensor, torch.Tensor] | None,
                  tgt: torch.Tensor, tgt_score: torch.Tensor) -> torch.Tensor:
    """mask_scores on items lo..hi-1, in place; records the (unmasked) score of each target found here."""
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


def _count(s: torch.Tensor, tgt_score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: items of `s` above, and equal to, that row's target score."""
    t = tgt_score[:, None]
    return (s > t).sum(1), (s == t).sum(1)


def rank_users(score_fn: BatchScorer, n_users: int, targets: np.ndarray, seen: list[np.ndarray] | None,
               n_items: int, batch_size: int = 512, item_chunk: int = DEFAULT_ITEM_CHUNK,
               ks: Iterable[int] = KS, min_chunk: int = 1, allow_neg_inf: bool = False,
               reject_constant: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-user metric arrays and each user's top-10 item ids (n_users, <=10; -1 where fewer than 10
    items are left unmasked), the catalogue scored in chunks (module docstring). `min_chunk`:
    item_chunks. Scores must be finite; `allow_neg_inf`: -inf marks items the scorer cannot
    recommend (a champion re-scored on a newer catalogue); `reject_constant`: module docstring."""
    ks = tuple(ks)
    carry = max(max(ks), COVERAGE_K)
    chunks = item_chunks(n_items, item_chunk, min_chunk)
    his = torch.as_tensor([hi for _, hi in chunks])
    per: dict[str, list[np.ndarray]] = {}
    top: list[np.ndarray] = []
    for start in range(0, n_users, batch_size):
        idx = np.arange(start, min(n_users, start + batch_size))
        chunk_scores = score_fn(idx)
        tgt = torch.as_tensor(targets[idx], dtype=torch.long)
        tgt_chunk = torch.searchsorted(his, tgt, right=True)  # index of the chunk holding each target
        pairs = _seen_pairs(seen, idx)
        tgt_score = torch.full((len(idx),), torch.nan)
        higher = torch.zeros(len(idx), dtype=torch.long)
        equal = torch.zeros(len(idx), dtype=torch.long)  # counts the target itself
        before = torch.full((len(idx), carry), -torch.inf)  # best scores of the chunks before the target's
        best_v = torch.empty(len(idx), 0)
        best_i = torch.empty(len(idx), 0, dtype=torch.long)
        low = torch.full((len(idx),), torch.inf)  # lowest unmasked score (constant-row check)
        for c, (lo, hi) in enumerate(chunks):
            s = chunk_scores(lo, hi).float().cpu()
            check_finite(s, lo, allow_neg_inf)
            s = _masked_chunk(s, lo, hi, pairs, tgt, tgt_score)
            known = tgt_chunk <= c
            if known.all():
                h, e = _count(s, tgt_score)
                higher += h
                equal += e
            else:
                k = known.nonzero().squeeze(1)
                h, e = _count(s[k], tgt_score[k])
                higher[k] += h
                equal[k] += e
                u = (~known).nonzero().squeeze(1)
                before[u] = torch.cat([before[u], s[u]], 1).topk(carry, 1).values
            if reject_constant:
                low = torch.minimum(low, s.masked_fill(s == -torch.inf, torch.inf).min(1).values)
            v, i = top_k(s, torch.arange(lo, hi).expand(len(idx), -1), carry)
            best_v, best_i = top_k(torch.cat([best_v, v], 1), torch.cat([best_i, i], 1), carry)
        if reject_constant:
            _reject_constant(best_v, low)
        h, e = _count(before, tgt_score)
        # the carry of earlier chunks ends on the target's score: more ties may have been cut off
        cut = (before[:, -1] == tgt_score) & (higher + h < max(ks)) & torch.isfinite(tgt_score)
        if cut.any():
            h[cut], e[cut] = _recount_before(chunk_scores, chunks, pairs, tgt, tgt_chunk, tgt_score, cut)
        higher, ties = higher + h, equal + e - 1
        last = ~torch.isfinite(tgt_score)  # a target that cannot be scored ranks last
        higher, ties = higher.masked_fill(last, n_items), ties.masked_fill(last, 0)
        for name, values in per_user_metrics(higher, ties, ks).items():
            per.setdefault(name, []).append(values)
        v, i = top_k(best_v, best_i, COVERAGE_K)
        top.append(i.masked_fill(v == -torch.inf, -1).numpy())  # a masked item is no recommendation
    arrays = {k: np.concatenate(v) for k, v in per.items()}
    return arrays, (np.concatenate(top) if top else np.zeros((0, COVERAGE_K), np.int64))


def _reject_constant(best: torch.Tensor, low: torch.Tensor) -> None:
    """best: each row's carried best scores, descending; low: each row's lowest unmasked score."""
    if best.shape[1] < 2:
        return
    flat = (best[:, 0] == low) & torch.isfinite(best[:, 1])  # two or more unmasked items, one score
    if flat.any():
        raise DegenerateScoresError(
            f"the model gives every item the same score for {int(flat.sum())} of {len(best)} users in a batch "
            f"(score {float(best[flat, 0][0]):.6g}): it has collapsed and ranks no better than chance. It is not "
            f"evaluated; retrain (check train.lr and the loss curve in the run summary)")


def _recount_before(chunk_scores: ChunkScores, chunks: list[tuple[int, int]], pairs, tgt: torch.Tensor,
                    tgt_chunk: torch.Tensor, tgt_score: torch.Tensor, rows: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (higher, equal) over the chunks before each selected row's target chunk, scored again."""
    sel = rows.nonzero().squeeze(1)
    higher = torch.zeros(len(sel), dtype=torch.long)
    equal = torch.zeros(len(sel), dtype=torch.long)
    scratch = torch.full_like(tgt_score, torch.nan)  # the targets' scores are known already
    for c, (lo, hi) in enumerate(chunks):
        need = tgt_chunk[sel] > c
        if not need.any():
            continue
        s = _masked_chunk(chunk_scores(lo, hi).float().cpu(), lo, hi, pairs, tgt, scratch)[sel]
        h, e = _count(s, tgt_score[sel])
        higher += h * need
        equal += e * need
    return higher, equal


def by_user(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per-target metric arrays -> per-user means (`rows`: each target's user, a user's targets
    consecutive; in the order of np.unique(rows)). Users, not targets, are the independent units:
    the A/B pairs them, and a user with more test events must not count more."""
    uniq, inv = np.unique(rows, return_inverse=True)
    if len(uniq) == len(rows) and (len(rows) < 2 or bool(np.all(np.diff(rows) > 0))):
        return arrays  # one target per user, already in user order
    n = np.bincount(inv)
    return {k: np.bincount(inv, weights=v, minlength=len(uniq)) / n for k, v in arrays.items()}


def summarise(arrays: dict[str, np.ndarray], top: np.ndarray, n_items: int) -> dict:
    """Mean metrics over users (arrays per user: by_user), coverage@10 (distinct top-10 items of
    all targets over the catalogue), the user and the target counts."""
    means = {k: float(v.mean()) for k, v in arrays.items()}
    means["coverage@10"] = float(len(np.setdiff1d(top, [-1])) / max(1, n_items - 2)) if len(top) else 0.0
    means["users"] = int(len(next(iter(arrays.values())))) if arrays else 0
    if means["users"] != len(top):
        means["targets"] = int(len(top))
    return means


def evaluate_ranking_chunked(score_fn: BatchScorer, n_users: int, targets: np.ndarray,
                             seen: list[np.ndarray] | None, n_items: int, batch_size: int = 512,
                             item_chunk: int = DEFAULT_ITEM_CHUNK, min_chunk: int = 1,
                             allow_neg_inf: bool = False, reject_constant: bool = False,
                             users: np.ndarray | None = None) -> tuple[dict, dict]:
    """score_fn(target rows) -> chunk scorer (lo, hi) -> (B, hi-lo). Returns (mean metrics, per-user
    arrays); `users`: each target's user when users have several targets (by_user)."""
    arrays, top = rank_users(score_fn, n_users, targets, seen, n_items, batch_size, item_chunk, min_chunk=min_chunk,
                             allow_neg_inf=allow_neg_inf, reject_constant=reject_constant)
    if users is not None:
        arrays = by_user(arrays, users)
    return summarise(arrays, top, n_items), arrays


def evaluate_ranking(score_fn: Callable[[np.ndarray], torch.Tensor], n_users: int, targets: np.ndarray,
                     seen: list[np.ndarray] | None, n_items: int, batch_size: int = 512,
                     item_chunk: int | None = None, allow_neg_inf: bool = False,
                     users: np.ndarray | None = None) -> tuple[dict, dict]:
    """score_fn(batch_indices) -> (B, n_items) scores (baselines, rescored bundles): the whole row
    is scored at once and, by default, ranked as one chunk."""
    def chunked(idx: np.ndarray) -> ChunkScores:
        s = score_fn(idx)
        return lambda lo, hi: s[:, lo:hi].float().clone()  # a copy: the ranking masks it in place

    return evaluate_ranking_chunked(chunked, n_users, targets, seen, n_items, batch_size,
                                    item_chunk or max(1, n_items), allow_neg_inf=allow_neg_inf, users=users)


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
