"""Network pieces shared by the agents: Continual World's MLP body and per-task heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cw_mlp(in_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """Continual World's body: Linear→LayerNorm→tanh, then Linear→LeakyReLU for each further layer.

    Matches ``continualworld/sac/models.py`` (``mlp`` with ``use_layer_norm=True``); LeakyReLU keeps
    TF's default slope 0.2 (``tf.keras.layers.LeakyReLU`` alpha), not torch's 0.01.
    """
    layers: list[nn.Module] = []
    prev = in_dim
    for i, width in enumerate(hidden_sizes):
        layers.append(nn.Linear(prev, width))
        if i == 0:
            layers += [nn.LayerNorm(width), nn.Tanh()]
        else:
            layers.append(nn.LeakyReLU(0.2))
        prev = width
    return nn.Sequential(*layers)


class MultiHead(nn.Module):
    """``num_heads`` linear heads of ``out_dim`` outputs in one matmul; each row picks its head.

    With ``num_heads == 1`` it is a plain linear layer (single-head ablation).
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int):
        super().__init__()
        self.out_dim, self.num_heads = out_dim, num_heads
        self.linear = nn.Linear(in_dim, out_dim * num_heads)

    def forward(self, features: torch.Tensor, head: int | torch.Tensor) -> torch.Tensor:
        """``head`` is one head for the whole batch (an int: only its slice of the weights is used)
        or one per row (an (n,) long tensor)."""
        if self.num_heads == 1:
            return self.linear(features)
        if isinstance(head, int):
            rows = slice(head * self.out_dim, (head + 1) * self.out_dim)
            return F.linear(features, self.linear.weight[rows], self.linear.bias[rows])
        out = self.linear(features).view(features.shape[0], self.num_heads, self.out_dim)
        return out[torch.arange(features.shape[0], device=features.device), head]
