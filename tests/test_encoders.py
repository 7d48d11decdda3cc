"""The encoders (models/encoders.py) and the network's parameters: side tables start at the id
embeddings' scale, an item's rows are the table's rows, self-attention is causal, model.encoder picks
the sequence layers, and the parameter names and order (the checkpoint and bundle format) are fixed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.encoders import CausalTransformer, ItemEncoder, ItemTables, UserTables, sequence_layers, side_embedding
from models.net import ModelConfig, SeqRecNet, TransitionTables

N = 12


def _items() -> ItemTables:
    g = torch.Generator().manual_seed(0)
    return ItemTables(cat=torch.randint(0, 4, (N, 2), generator=g), cat_sizes=[4, 4],
                      multi=torch.randint(0, 5, (N, 3), generator=g), multi_size=5,
                      num=torch.randint(0, 3, (N, 2), generator=g), num_size=3,
                      pop=torch.randint(0, 4, (N,), generator=g), pop_size=4, text=torch.rand(N, 3, generator=g),
                      attr_target=(torch.rand(N, 4, generator=g) > 0.5).float())


def test_side_tables_start_at_the_id_scale_with_a_zero_padding_row():
    torch.manual_seed(0)
    emb = side_embedding(2000, 64)
    assert torch.equal(emb.weight[0], torch.zeros(64))
    assert abs(emb.weight[1:].std().item() - 64 ** -0.5) < 0.005
    assert side_embedding(10, 8, padding=False).weight[0].abs().sum() > 0
    assert isinstance(side_embedding(10, 8, bag=True), nn.EmbeddingBag)


def test_an_items_rows_are_its_rows_of_the_table():
    torch.manual_seed(0)
    enc = ItemEncoder(N, 8, _items())
    ids = torch.tensor([0, 3, 11, 3, 2])
    with torch.no_grad():
        table = enc.table()
        assert torch.allclose(enc.rows(ids), table[ids], atol=1e-6)
        assert torch.equal(table[0], enc.id_emb.weight[0]), "no item view for padding"
        assert not torch.allclose(table, enc.id_emb.weight), "the item view adds to the id embedding"
    plain = ItemEncoder(N, 8, None)
    assert plain.table() is plain.id_emb.weight and torch.equal(plain.rows(ids), plain.id_emb.weight[ids])


def test_attention_sees_itself_and_the_past_only():
    torch.manual_seed(0)
    attn = CausalTransformer(8, 2, 2, 0.0).eval()
    x = torch.randn(2, 6, 8)
    pad = torch.tensor([[True, True, False, False, False, False], [False] * 6])
    later = x.clone()
    later[:, 4:] = torch.randn(2, 2, 8)
    with torch.no_grad():
        a, b = attn(x, pad), attn(later, pad)
        assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6) and not torch.allclose(a[:, 4:], b[:, 4:])
        padded = x.clone()
        padded[0, :2] = torch.randn(2, 8)  # what sits at padded positions does not matter
        assert torch.allclose(attn(padded, pad)[0, 2:], a[0, 2:], atol=1e-6)
        assert torch.isfinite(a).all()


@pytest.mark.parametrize("kind, lstm_layers, attn_layers", [("lstm", 2, 0), ("transformer", 0, 2), ("hybrid", 1, 1)])
def test_the_encoder_kind_picks_the_sequence_layers(kind, lstm_layers, attn_layers):
    lstm, attn = sequence_layers(kind, 8, 2, 2, 0.1, 0.0)
    assert (lstm.num_layers if lstm is not None else 0) == lstm_layers
    assert (len(attn.enc.layers) if attn is not None else 0) == attn_layers
    if kind == "lstm":
        assert lstm.dropout == 0.1  # between stacked LSTM layers only
    elif lstm is not None:
        assert lstm.dropout == 0.0


def test_the_parameters_keep_their_names_and_order():
    """Checkpoints, registered bundles (`state_dict`) and the optimiser state (by position) depend on
    the network's parameter names and order: a rename or a reordering must be a decision, not an
    accident of moving code."""
    users = UserTables(cat=torch.zeros(3, 1, dtype=torch.long), cat_sizes=[2], num=torch.ones(3, 1, dtype=torch.long),
                       num_size=2, dense=torch.rand(3, 2))
    ptr = torch.zeros(N + 1, dtype=torch.long)
    trans = TransitionTables([ptr, ptr], [torch.zeros(0, dtype=torch.long)] * 2, [torch.zeros(0)] * 2)
    cfg = ModelConfig(dim=8, max_len=6, encoder="hybrid", fusion="gated", mixtures=2, transition_lags=2,
                      uncertainty_weighting=True, user_history=True)
    net = SeqRecNet(cfg, N, 3, 4, _items(), users, 3, trans)
    names = [k for k, _ in net.named_parameters()]
    assert names[:3] == ["log_vars", "repeat_bias", "trans_count_w"]
    top = list(dict.fromkeys(k.split(".")[0] for k in names[3:]))
    assert top == ["items", "etype", "gap", "pos", "in_norm", "lstm", "attn", "user", "fuse", "out_norm",
                   "attr_head", "engage_head", "trans_gate", "mos_proj", "mos_prior"]
    assert list(net.state_dict()) == names, "no buffers: the state_dict is the parameters, in this order"
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["repeat_bias"] == (4,) and shapes["trans_count_w"] == (2,) and shapes["log_vars"] == (3,)
    assert shapes["fuse.weight"] == (8, 16) and shapes["trans_gate.weight"] == (3, 8)
    assert shapes["mos_proj.weight"] == (16, 8) and shapes["mos_prior.weight"] == (2, 8)
    assert [k for k in names if k.startswith("items.")][:3] == ["items.scale", "items.id_emb.weight",
                                                                 "items.cat.0.weight"]
