"""The teacher of both stages is frozen the same way."""
from torch import nn

__all__ = ["freeze"]


def freeze(module: nn.Module) -> nn.Module:
    """``module`` in eval mode (BatchNorm uses its running statistics, dropout is off) with
    ``requires_grad=False`` on every parameter; returned for chaining. A frozen teacher also runs
    under ``torch.no_grad()`` where its caller computes its outputs."""
    module.eval()
    module.requires_grad_(False)
    return module
