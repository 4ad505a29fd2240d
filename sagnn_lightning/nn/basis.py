"""Gaussian radial basis for bond lengths (MEGNet's edge features)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GaussianExpansion(nn.Module):
    r"""Expand distances on evenly spaced Gaussians: :math:`\exp(-(d - \mu_k)^2 / \sigma^2)`.

    MEGNet (Chen et al., Chem. Mater. 2019) uses 100 centres on 0–5 Å with width 0.5 Å.

    Args:
        start: first centre (Å), default 0.0.
        stop: last centre (Å), default 5.0.
        num_gaussians: number of centres ``K``, default 100.
        width: :math:`\sigma` (Å), default 0.5.

    Shapes:
        ``[E]`` distances (Å) → ``[E, K]`` in the dtype of the input.
    """

    def __init__(self, start: float = 0.0, stop: float = 5.0, num_gaussians: int = 100, width: float = 0.5) -> None:
        super().__init__()
        if num_gaussians < 1:
            raise ValueError(f"GaussianExpansion: num_gaussians must be >= 1, got {num_gaussians}")
        if not width > 0:
            raise ValueError(f"GaussianExpansion: width must be > 0 Å, got {width}")
        if not stop >= start:
            raise ValueError(f"GaussianExpansion: stop ({stop}) must be >= start ({start})")
        self.start, self.stop, self.num_gaussians, self.width = (
            float(start),
            float(stop),
            int(num_gaussians),
            float(width),
        )

    def centers(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
        """``[K]`` Gaussian centres (Å), built in the requested dtype (exact in float64, no stored buffer)."""
        return torch.linspace(self.start, self.stop, self.num_gaussians, dtype=dtype, device=device)

    def forward(self, distances: Tensor) -> Tensor:
        centers = self.centers(distances.dtype, distances.device)
        return torch.exp((distances.unsqueeze(-1) - centers).square_().mul_(-1.0 / self.width**2))

    def extra_repr(self) -> str:
        return f"start={self.start}, stop={self.stop}, num_gaussians={self.num_gaussians}, width={self.width}"
