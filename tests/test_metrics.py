import math

import numpy as np
import pytest
import torch

from models.baselines import Markov, Popularity
from models.metrics import binary_metrics, evaluate_ranking, f1_threshold, mask_scores, per_user_metrics, ranks


def test_ranks_and_metrics_against_hand_computed_values():
    # items 0,1 are pad/unknown and never count; catalogue = items 2..6
    scores = torch.tensor([[9.0, 9.0, 0.5, 0.9, 0.1, 0.3, 0.7],    # target 3 is best -> rank 0
                           [9.0, 9.0, 0.5, 0.9, 0.1, 0.3, 0.7]])   # target 5: 0.9,0.7,0.5 above -> rank 3
    targets = torch.tensor([3, 5])
    higher, ties = ranks(mask_scores(scores, None, targets), targets)
    assert higher.tolist() == [0, 3] and ties.tolist() == [0, 0]
    m = per_user_metrics(higher, ties, ks=(1, 5))
    assert m["hr@1"].tolist() == [1.0, 0.0] and m["hr@5"].tolist() == [1.0, 1.0]
    assert np.allclose(m["ndcg@5"], [1.0, 1 / math.log2(5)])
    assert np.allclose(m["mrr@5"], [1.0, 0.25])


def test_exclude_seen_masks_history_but_never_the_target():
    scores = torch.tensor([[0.0, 0.0, 0.5, 0.9, 0.1, 0.3, 0.7]])
    seen = [np.array([3, 6, 5])]  # the target 5 was seen before (a repeat) and must stay rankable
    s = mask_scores(scores, seen, torch.tensor([5]))
    assert ranks(s, torch.tensor([5]))[0].tolist() == [1]  # only item 2 (0.5) is above it now
    assert torch.isinf(s[0, 3]) and torch.isinf(s[0, 6])


def test_evaluate_ranking_batches_and_coverage():
    rng = np.random.default_rng(0)
    table = torch.as_tensor(rng.random((10, 12)), dtype=torch.float32)
    targets = rng.integers(2, 12, 10)
    one, per1 = evaluate_ranking(lambda idx: table[idx], 10, targets, None, 12, batch_size=3)
    two, per2 = evaluate_ranking(lambda idx: table[idx], 10, targets, None, 12, batch_size=10)
    assert one == two and np.array_equal(per1["ndcg@10"], per2["ndcg@10"])
    assert 0 < one["coverage@10"] <= 1.0


def test_baselines_score_as_defined():
    train = [np.array([2, 3, 4]), np.array([2, 3]), np.array([4, 2])]
    pop = Popularity(train, 6).score([np.array([2])])
    assert pop[0].tolist() == [0, 0, 3, 2, 2, 0]
    mk = Markov(train, 6, backoff=0.0).score([np.array([4, 2])])
    assert mk[0, 3] == 1.0 and mk[0, 4] == 0.0  # after 2 always came 3


def test_baseline_chunk_scorers_equal_whole_rows():
    """Pop and Markov score 1M-item catalogues chunk by chunk; every chunk equals the whole row's slice."""
    rng = np.random.default_rng(1)
    train = [rng.integers(2, 40, rng.integers(2, 12)) for _ in range(60)]
    hist = [t[: rng.integers(1, len(t) + 1)] for t in train[:7]]
    for model in (Popularity(train, 40), Markov(train, 40)):
        whole, chunk = model.score(hist), model.chunk_scorer(hist)
        for lo, hi in ((0, 13), (13, 26), (26, 40), (0, 40)):
            assert torch.equal(chunk(lo, hi), whole[:, lo:hi])


def test_f1_threshold_by_hand():
    y = np.array([0, 1, 1, 0, 0])
    s = np.array([0.1, 0.8, 0.4, 0.6, 0.2])
    # >= 0.4 predicts {0.8, 0.4, 0.6}: P 2/3, R 1, F1 0.8; >= 0.6: 0.5; >= 0.8: 0.667; >= 0.2: 0.667
    assert f1_threshold(y, s) == 0.4
    assert binary_metrics(y, s, 0.4)["f1"] == 0.8
    assert f1_threshold(np.zeros(3), s[:3]) == 0.5


def test_binary_metrics():
    out = binary_metrics(np.array([0, 1, 1, 0]), np.array([0.1, 0.8, 0.4, 0.6]))
    assert out["precision"] == 0.5 and out["recall"] == 0.5 and out["auc"] == 0.75


def test_training_windows_train_every_target_once_with_context():
    from models.data import Sequences, training_windows

    L = 5
    for n in (2, 4, 23, 57):
        seqs = Sequences(user=np.array([1]), items=[np.arange(2, 2 + n)], etypes=[np.ones(n, int)],
                         gaps=[np.ones(n, int)], engage=[np.zeros(n, int)], n_train=np.array([n]),
                         valid_targets=(np.zeros(0, int), np.zeros(0, int)),
                         test_targets=(np.zeros(0, int), np.zeros(0, int)))
        for stride in (None, 2, 3, 5):
            w = training_windows(seqs, L, stride)
            t, seq = w["target"].numpy(), w["seq"].numpy()
            assert sorted(t[t > 0].tolist()) == list(range(3, 2 + n))  # every target once, none twice
            assert np.array_equal(t[:, :-1][t[:, :-1] > 0], seq[:, 1:][t[:, :-1] > 0])  # target = next input
            s = stride or L
            for i in range(len(t)):
                starts_at_first_event = seq[i][seq[i] > 0][0] == 2
                for j in np.flatnonzero(t[i]):
                    context = int((seq[i, : j + 1] > 0).sum())
                    assert starts_at_first_event or context >= L - s + 1


def test_gated_fusion_never_drops_the_sequence_path():
    """A saturated gate must still leave the fused state dependent on the sequence (the softmax
    gate it replaced could collapse onto the static user vector)."""
    from models.net import ModelConfig, SeqRecNet, UserTables

    torch.manual_seed(0)
    users = UserTables(cat=torch.zeros(3, 0, dtype=torch.long), cat_sizes=[], num=torch.ones(3, 1, dtype=torch.long),
                       num_size=2, dense=torch.rand(3, 4))
    net = SeqRecNet(ModelConfig(dim=16, max_len=6, item_view=False, fusion="gated", attr_task=False), 12, 3, 4,
                    None, users, 3).eval()
    with torch.no_grad():
        net.fuse.weight.zero_()
        net.fuse.bias.fill_(100.0)  # gate fully open to the user view
    seq_a = torch.tensor([[0, 0, 2, 3, 4, 5]])
    seq_b = torch.tensor([[0, 0, 9, 8, 7, 6]])
    ones = torch.ones_like(seq_a)
    user = torch.tensor([1])
    h_a = net.encode(seq_a, ones, ones, user)[:, -1]
    h_b = net.encode(seq_b, ones, ones, user)[:, -1]
    assert not torch.allclose(h_a, h_b, atol=1e-3)


def _reference(scores: torch.Tensor, targets: np.ndarray, seen, n_items: int) -> tuple[dict, float]:
    """One pass over the whole matrix: exact ranks, and top-10 by (score desc, item asc) without masked items."""
    s = mask_scores(scores, seen, torch.as_tensor(targets))
    per = per_user_metrics(*ranks(s, torch.as_tensor(targets)))
    tops = [[j for j in np.lexsort((np.arange(n_items), -row.numpy()))[:10] if row[j] > -np.inf] for row in s]
    return per, len(np.unique(np.concatenate(tops))) / (n_items - 2)


def test_item_chunked_ranking_equals_one_pass_with_ties_and_masking():
    """Chunk sizes that do and do not divide the catalogue, heavy ties (integer scores), repeats of
    seen items as targets, targets on the pad/unknown indices: the same ranks and coverage as one pass."""
    rng = np.random.default_rng(3)
    for n_users, n_items, levels in [(50, 37, 3), (70, 64, 40), (33, 101, 1_000_000)]:
        scores = torch.as_tensor(rng.integers(0, levels, (n_users, n_items)), dtype=torch.float32)
        targets = rng.integers(0, n_items, n_users)
        seen = [np.unique(np.r_[rng.integers(0, n_items, rng.integers(0, 12)), targets[u]] if u % 3 == 0 else
                          rng.integers(0, n_items, rng.integers(0, 12))) for u in range(n_users)]
        for exclude in (True, False):
            sn = seen if exclude else None
            ref_per, ref_cov = _reference(scores, targets, sn, n_items)
            one, per1 = evaluate_ranking(lambda idx: scores[idx], n_users, targets, sn, n_items, batch_size=16)
            assert one["coverage@10"] == ref_cov
            assert all(np.array_equal(per1[k], ref_per[k]) for k in ref_per)
            for chunk in (1, 2, 3, 7, 10, 16, n_items - 1, n_items, n_items + 5):
                for batch in (16, 64):
                    m, per = evaluate_ranking(lambda idx: scores[idx], n_users, targets, sn, n_items, batch, chunk)
                    assert m == one, (n_items, exclude, chunk, batch)
                    assert all(np.array_equal(per[k], per1[k]) for k in per1)


def test_chunked_scorer_sees_each_item_once_and_bounded_chunks():
    from models.metrics import evaluate_ranking_chunked

    rng = np.random.default_rng(0)
    table = torch.as_tensor(rng.random((20, 1000)), dtype=torch.float32)
    targets = rng.integers(2, 1000, 20)
    calls: list[tuple[int, int]] = []

    def scorer(idx):
        def chunk(lo, hi):
            calls.append((lo, hi))
            return table[idx, lo:hi].clone()
        return chunk

    m, _ = evaluate_ranking_chunked(scorer, 20, targets, None, 1000, batch_size=20, item_chunk=300)
    assert calls == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    assert m == evaluate_ranking(lambda idx: table[idx], 20, targets, None, 1000)[0]


def test_top_k_keeps_the_lower_item_on_ties_across_chunks():
    from models.metrics import item_chunks, top_k

    row = torch.tensor([[1.0, 3.0, 2.0, 3.0, 3.0, 0.0, 3.0]])
    items = torch.arange(7).expand(1, -1)
    v, i = top_k(row, items, 3)
    assert i.tolist() == [[1, 3, 4]] and v.tolist() == [[3.0, 3.0, 3.0]]
    best_v, best_i = torch.empty(1, 0), torch.empty(1, 0, dtype=torch.long)
    for lo, hi in item_chunks(7, 2):
        cv, ci = top_k(row[:, lo:hi], items[:, lo:hi], 3)
        best_v, best_i = top_k(torch.cat([best_v, cv], 1), torch.cat([best_i, ci], 1), 3)
    assert best_i.tolist() == [[1, 3, 4]]
    assert item_chunks(10, 4) == [(0, 4), (4, 8), (8, 10)] and item_chunks(10, 4, min_width=3) == [(0, 4), (4, 10)]


def test_ties_never_help_the_target():
    """The metric is its expectation over random tie-breaking: a tie with k items is worth what the
    k+1 positions are worth on average, never the best of them."""
    from models.metrics import per_user_metrics

    # target tied with 3 others at the top: positions 0..3 equally likely
    m = per_user_metrics(torch.tensor([0]), torch.tensor([3]), ks=(1, 2, 10))
    assert m["hr@1"][0] == pytest.approx(0.25) and m["hr@2"][0] == pytest.approx(0.5) and m["hr@10"][0] == 1.0
    assert m["ndcg@10"][0] == pytest.approx(np.mean([1 / math.log2(r + 2) for r in range(4)]))
    assert m["mrr@10"][0] == pytest.approx(np.mean([1 / (r + 1) for r in range(4)]))
    # 8 above, tied with 4 others: positions 8..12, two of five inside the top 10
    m = per_user_metrics(torch.tensor([8]), torch.tensor([4]), ks=(10,))
    assert m["hr@10"][0] == pytest.approx(2 / 5)
    assert m["ndcg@10"][0] == pytest.approx((1 / math.log2(10) + 1 / math.log2(11)) / 5)


def test_a_constant_scorer_ranks_like_chance_not_perfectly():
    """Equal scores for every item used to give HR@10 = NDCG@10 = 1.0 (nothing scored strictly higher)."""
    n_users, n_items = 40, 202
    targets = np.random.default_rng(0).integers(2, n_items, n_users)
    for chunk in (None, 7, 50):
        m, _ = evaluate_ranking(lambda idx: torch.zeros(len(idx), n_items), n_users, targets, None, n_items,
                                batch_size=16, item_chunk=chunk)
        assert m["hr@10"] == pytest.approx(10 / 200) and m["hr@20"] == pytest.approx(20 / 200)
        assert m["ndcg@10"] == pytest.approx(sum(1 / math.log2(r + 2) for r in range(10)) / 200)


def test_integer_count_ties_give_baselines_no_credit():
    """Pop on a catalogue where every item has the same count ranks like chance."""
    train = [np.array([2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13])]  # each item once
    pop = Popularity(train, 14)
    targets = np.array([5, 9, 13])
    m, _ = evaluate_ranking(lambda idx: pop.score([train[0]] * len(idx)), 3, targets, None, 14)
    assert m["hr@5"] == pytest.approx(5 / 12) and m["hr@10"] == pytest.approx(10 / 12)


def test_non_finite_scores_are_an_error_not_a_number():
    from models.metrics import DegenerateScoresError

    targets = np.array([3, 4, 5])
    for bad in (torch.nan, torch.inf, -torch.inf):
        scores = torch.rand(3, 20)
        scores[1, 7] = bad
        with pytest.raises(DegenerateScoresError, match="non-finite"):
            evaluate_ranking(lambda idx: scores[idx], 3, targets, None, 20)
    # a re-scored champion marks items it never saw -inf: allowed, and such a target ranks last
    scores = torch.rand(3, 20)
    scores[:, 5] = -torch.inf
    _, per = evaluate_ranking(lambda idx: scores[idx], 3, targets, None, 20, allow_neg_inf=True)
    assert per["hr@20"][2] == 0.0 and per["hr@20"][:2].tolist() == [1.0, 1.0]
    scores[0, 9] = torch.nan
    with pytest.raises(DegenerateScoresError):
        evaluate_ranking(lambda idx: scores[idx], 3, targets, None, 20, allow_neg_inf=True)


def test_a_collapsed_model_is_rejected_when_asked():
    from models.metrics import DegenerateScoresError, evaluate_ranking_chunked

    targets = np.array([3, 4])
    flat = lambda idx: (lambda lo, hi: torch.full((len(idx), hi - lo), 0.5))  # noqa: E731
    with pytest.raises(DegenerateScoresError, match="same score"):
        evaluate_ranking_chunked(flat, 2, targets, None, 30, item_chunk=8, reject_constant=True)
    # every item but the target masked as seen: one candidate is not a constant ranking
    seen = [np.arange(2, 30), np.arange(2, 30)]
    m, _ = evaluate_ranking_chunked(flat, 2, targets, seen, 30, item_chunk=8, reject_constant=True)
    assert m["hr@5"] == 1.0
