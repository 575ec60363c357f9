"""Network building blocks shared by the models."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def mlp(
    sizes: list[int],
    final_activation: nn.Module | None = None,
    activation: Callable[[], nn.Module] = nn.ELU,
) -> nn.Sequential:
    """Linear layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with ``activation()``
    between them (ELU by default; none after the last layer) and an optional final
    activation. Layers are created in order, so the default initialisation draws the
    same numbers whatever the (parameter-free) activation."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    if final_activation is not None:
        layers.append(final_activation)
    return nn.Sequential(*layers)


def last_linear(net: nn.Sequential) -> nn.Linear:
    """The last ``nn.Linear`` layer of ``net`` (e.g. to start a decoder at the mean profile)."""
    return [m for m in net if isinstance(m, nn.Linear)][-1]


def mlp_rows(net: nn.Sequential, h: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``net(h)`` restricted to the outputs ``rows`` of its last linear layer (all when None):
    the last layer then costs ``len(rows)`` outputs instead of all of them."""
    if rows is None:
        return net(h)
    last = last_linear(net)
    for layer in net:
        h = nn.functional.linear(h, last.weight[rows], last.bias[rows]) if layer is last else layer(h)
    return h


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y`` for ``y > 0`` (``y`` itself above 20, where softplus is the identity in float32)."""
    return torch.where(y > 20, y, torch.log(torch.expm1(y)))
