"""The external transformation matrix: a learned map g from frozen tokens to the spectral embedding."""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError

ARCHITECTURES = ("linear", "affine", "mlp")


def head_tensor_shapes(architecture: str, in_dim: int, out_dim: int, hidden_dim: int) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor of a head's state dict (what a checkpoint must hold for it)."""
    if architecture == "linear":
        return {"net.weight": (out_dim, in_dim)}
    if architecture == "affine":
        return {"net.weight": (out_dim, in_dim), "net.bias": (out_dim,)}
    return {
        "net.0.weight": (hidden_dim, in_dim),
        "net.0.bias": (hidden_dim,),
        "net.2.weight": (out_dim, hidden_dim),
        "net.2.bias": (out_dim,),
    }


class ProjectionHead(nn.Module):
    """``g: R^D -> R^m``. ``linear``: one matrix W (no bias), the default; ``affine``: a matrix and a bias (the
    supervised probe read as a head: the oracle head); ``mlp``: Linear-GELU-Linear."""

    def __init__(self, in_dim: int, out_dim: int = 50, architecture: str = "linear", hidden_dim: int = 512):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ConfigError(f"head architecture must be one of {ARCHITECTURES}, got '{architecture}'")
        if in_dim < 1 or out_dim < 1:
            raise ConfigError(f"head dimensions must be positive, got {in_dim} -> {out_dim}")
        self.in_dim, self.out_dim, self.architecture, self.hidden_dim = in_dim, out_dim, architecture, hidden_dim
        if architecture in ("linear", "affine"):
            self.net = nn.Linear(in_dim, out_dim, bias=architecture == "affine")
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> ProjectionHead:
        """A linear layer (e.g. a classifier's logits) as an affine head, in eval mode."""
        head = cls(layer.in_features, layer.out_features, "affine")
        head.net.load_state_dict(layer.state_dict())
        return head.eval()

    def config(self) -> dict:
        return {
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "architecture": self.architecture,
            "hidden_dim": self.hidden_dim,
        }

    def forward(self, tokens: Tensor) -> Tensor:
        return self.net(tokens)
