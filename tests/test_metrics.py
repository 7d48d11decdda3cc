import math

import numpy as np
import torch

from models.baselines import Markov, Popularity
from models.metrics import binary_metrics, evaluate_ranking, mask_scores, per_user_metrics, ranks


def test_ranks_and_metrics_against_hand_computed_values():
    # items 0,1 are pad/unknown and never count; catalogue = items 2..6
    scores = torch.tensor([[9.0, 9.0, 0.5, 0.9, 0.1, 0.3, 0.7],    # target 3 is best -> rank 0
                           [9.0, 9.0, 0.5, 0.9, 0.1, 0.3, 0.7]])   # target 5: 0.9,0.7,0.5 above -> rank 3
    targets = torch.tensor([3, 5])
    r = ranks(mask_scores(scores, None, targets), targets)
    assert r.tolist() == [0, 3]
    m = per_user_metrics(r, ks=(1, 5))
    assert m["hr@1"].tolist() == [1.0, 0.0] and m["hr@5"].tolist() == [1.0, 1.0]
    assert np.allclose(m["ndcg@5"], [1.0, 1 / math.log2(5)])
    assert np.allclose(m["mrr@5"], [1.0, 0.25])


def test_exclude_seen_masks_history_but_never_the_target():
    scores = torch.tensor([[0.0, 0.0, 0.5, 0.9, 0.1, 0.3, 0.7]])
    seen = [np.array([3, 6, 5])]  # the target 5 was seen before (a repeat) and must stay rankable
    s = mask_scores(scores, seen, torch.tensor([5]))
    assert ranks(s, torch.tensor([5])).tolist() == [1]  # only item 2 (0.5) is above it now
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


def test_binary_metrics():
    out = binary_metrics(np.array([0, 1, 1, 0]), np.array([0.1, 0.8, 0.4, 0.6]))
    assert out["precision"] == 0.5 and out["recall"] == 0.5 and out["auc"] == 0.75


def test_training_windows_train_every_target_once_with_context():
    from models.data import Sequences, training_windows

    L = 5
    for n in (2, 4, 23, 57):
        seqs = Sequences(user=np.array([1]), items=[np.arange(2, 2 + n)], etypes=[np.ones(n, int)],
                         gaps=[np.ones(n, int)], engage=[np.zeros(n, int)], n_train=np.array([n]))
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
