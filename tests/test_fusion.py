"""Fusion of the user view into the sequence state (model.fusion, models/fusion.py): each kind computes
its formula, with a user vector per row or per position, and the gated kind never drops the sequence."""

from __future__ import annotations

import pytest
import torch

from models.fusion import fuse, fusion_layer


def _inputs(per_position: bool):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8)
    u = torch.randn(3, 5, 8) if per_position else torch.randn(3, 8)
    return x, u, (u if per_position else u.unsqueeze(1).expand(3, 5, 8))


@pytest.mark.parametrize("per_position", [False, True])
def test_each_kind_is_its_formula(per_position):
    x, u, uu = _inputs(per_position)
    assert fusion_layer("sum", 8) is None
    assert torch.equal(fuse("sum", x, u, None), x + uu)
    torch.manual_seed(1)
    layer = fusion_layer("concat", 8)
    assert (layer.in_features, layer.out_features) == (16, 8)
    w, b = layer.weight, layer.bias
    with torch.no_grad():
        assert torch.allclose(fuse("concat", x, u, layer), x @ w[:, :8].T + uu @ w[:, 8:].T + b, atol=1e-6)
        layer = fusion_layer("gated", 8)
        w, b = layer.weight, layer.bias
        gate = torch.sigmoid(x @ w[:, :8].T + uu @ w[:, 8:].T + b)
        assert torch.allclose(fuse("gated", x, u, layer), x + gate * uu, atol=1e-6)


def test_the_gate_lets_the_user_in_but_keeps_the_sequence():
    x, u, uu = _inputs(False)
    layer = fusion_layer("gated", 8)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(-100.0)  # closed: the sequence state alone
        assert torch.allclose(fuse("gated", x, u, layer), x)
        layer.bias.fill_(100.0)  # fully open: the user view is added, the sequence kept
        assert torch.allclose(fuse("gated", x, u, layer), x + uu)
