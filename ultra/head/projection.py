"""The external transformation matrix: a learned map g from frozen tokens to the spectral embedding."""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError

ARCHITECTURES = ("linear", "mlp")


class ProjectionHead(nn.Module):
    """``g: R^D -> R^m``. ``linear``: one matrix W (no bias), the default; ``mlp``: Linear-GELU-Linear."""

    def __init__(self, in_dim: int, out_dim: int = 50, architecture: str = "linear", hidden_dim: int = 512):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ConfigError(f"head architecture must be one of {ARCHITECTURES}, got '{architecture}'")
        if in_dim < 1 or out_dim < 1:
            raise ConfigError(f"head dimensions must be positive, got {in_dim} -> {out_dim}")
        self.in_dim, self.out_dim, self.architecture, self.hidden_dim = in_dim, out_dim, architecture, hidden_dim
        if architecture == "linear":
            self.net = nn.Linear(in_dim, out_dim, bias=False)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def config(self) -> dict:
        return {
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "architecture": self.architecture,
            "hidden_dim": self.hidden_dim,
        }

    def forward(self, tokens: Tensor) -> Tensor:
        return self.net(tokens)
