"""Fusion of the user view into the sequence state (model.fusion), per position:

- `sum`:    x + u
- `concat`: W [x; u]
- `gated`:  x + sigmoid(W [x; u]) * u (the default)

The gated form is a residual gate: the user view is let in per dimension, but the sequence state is
always kept. A softmax gate over [sequence, user] could drop the sequence path and collapsed
next-item ranking to a static per-user list (BENCHMARKS.md, ablations).

W is a parameter of the network (`SeqRecNet.fuse`, made by `fusion_layer`; none for `sum`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Fusion = Literal["concat", "sum", "gated"]


def fusion_layer(kind: Fusion, dim: int) -> nn.Linear | None:
    """The W of `kind` for states of size `dim`, or None (`sum` has no parameters)."""
    return nn.Linear(2 * dim, dim) if kind in ("concat", "gated") else None


def fuse(kind: Fusion, x: torch.Tensor, u: torch.Tensor, layer: nn.Linear | None) -> torch.Tensor:
    """Sequence states x (B, L, d) fused with user vectors u (B, d) or (B, L, d)."""
    u = u.unsqueeze(1).expand_as(x) if u.dim() == 2 else u
    if kind == "sum":
        return x + u
    assert layer is not None, f"fusion {kind!r} needs its layer (fusion_layer)"
    if kind == "concat":
        return layer(torch.cat([x, u], -1))
    return x + torch.sigmoid(layer(torch.cat([x, u], -1))) * u
