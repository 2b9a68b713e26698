"""The teacher of both stages is frozen the same way, and may have its norm layers folded."""
import logging
from collections import Counter
from typing import Iterable, List, Tuple

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["freeze", "fold_frozen_norms"]

logger = logging.getLogger(__name__)


def freeze(module: nn.Module) -> nn.Module:
    """``module`` in eval mode (BatchNorm uses its running statistics, dropout is off) with
    ``requires_grad=False`` on every parameter; returned for chaining. A frozen teacher also runs
    under ``torch.no_grad()`` where its caller computes its outputs."""
    module.eval()
    module.requires_grad_(False)
    return module


def _foldable_norm(norm) -> bool:
    """A per-channel affine map with fixed statistics: Detectron2's FrozenBatchNorm2d, or a
    BatchNorm2d in eval mode with running statistics."""
    if isinstance(norm, nn.BatchNorm2d):
        return not norm.training and norm.running_mean is not None
    return isinstance(norm, FrozenBatchNorm2d)


def _fold(conv: nn.Conv2d, norm) -> None:
    """``conv``'s weight and bias replaced by those of conv followed by ``norm``."""
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean,
                                        norm.running_var, norm.eps, norm.weight, norm.bias)
    conv.weight = nn.Parameter(weight.detach(), requires_grad=False)
    conv.bias = nn.Parameter(bias.detach(), requires_grad=False)


def _traced_pairs(module: nn.Module) -> List[Tuple[str, str]]:
    """(conv name, norm name) of every nn.Conv2d whose output goes to a foldable norm and nowhere
    else, each module called once, in ``module``'s torch.fx graph; [] where it cannot be traced."""
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as e:  # dynamic control flow, non-tensor inputs, ...
        logger.info(f"{type(module).__name__} cannot be traced by torch.fx ({type(e).__name__}): "
                    f"only norms inside their convolution are folded")
        return []
    calls = [n for n in graph.nodes if n.op == "call_module"]
    once = {target for target, count in Counter(n.target for n in calls).items() if count == 1}
    pairs = []
    for node in calls:
        source = node.args[0] if node.args else None
        if (node.target in once and getattr(source, "op", None) == "call_module"
                and source.target in once and len(source.users) == 1
                and isinstance(module.get_submodule(source.target), nn.Conv2d)
                and _foldable_norm(module.get_submodule(node.target))):
            pairs.append((source.target, node.target))
    return pairs


def _changes_a_kept_output(conv: str, norm: str, keep: Iterable[str]) -> bool:
    """Whether folding would change what a module named in ``keep`` returns: the convolution itself,
    or a module holding the convolution but not its norm (it may return the convolution's output)."""
    def within(name, ancestor):
        return ancestor == "" or name == ancestor or name.startswith(ancestor + ".")
    return any(within(conv, k) and not within(norm, k) for k in keep)


def fold_frozen_norms(module: nn.Module, keep: Iterable[str] = (), trace: bool = True) -> int:
    """Fold ``module``'s (a frozen network's) norm layers into the convolutions before them, in
    place; returns how many. Folded: Detectron2's Conv2d with a FrozenBatchNorm2d or eval-mode
    BatchNorm2d ``norm`` (the norm removed), and, where torch.fx traces ``module``, an nn.Conv2d
    whose output only feeds such a norm (the norm replaced by nn.Identity; not tried unless
    ``trace``). Exact up to rounding:
    conv(x, W, b) then (y - mean) * gamma / sqrt(var + eps) + beta is conv(x, W', b') with
    W' = W gamma / sqrt(var + eps), b' = (b - mean) gamma / sqrt(var + eps) + beta. ``keep``:
    names of modules whose outputs are read (feature taps); a pair whose folding would change
    one of them is left as it is. A module in training mode is refused (its norms still learn)."""
    if module.training:
        raise ValueError(f"fold_frozen_norms needs a frozen module (eval mode): "
                         f"{type(module).__name__} is in training mode")
    keep = list(keep)
    folded = 0
    for conv in module.modules():
        norm = getattr(conv, "norm", None)
        if isinstance(conv, Conv2d) and norm is not None and _foldable_norm(norm):
            _fold(conv, norm)
            conv.norm = None  # Detectron2's Conv2d applies its norm only when it is not None
            folded += 1
    for conv_name, norm_name in _traced_pairs(module) if trace else []:
        if _changes_a_kept_output(conv_name, norm_name, keep):
            continue
        _fold(module.get_submodule(conv_name), module.get_submodule(norm_name))
        module.set_submodule(norm_name, nn.Identity())
        folded += 1
    logger.info(f"{folded} frozen norm layers of the {type(module).__name__} folded into its "
                f"convolutions")
    return folded
