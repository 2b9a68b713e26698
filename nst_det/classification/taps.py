"""Feature taps: a classifier's logits together with the feature maps of named layers, the inputs
of the transfer losses (NST, AT, FitNet)."""
import difflib
from functools import partial
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from nst_det.classification.models import available_classifiers

__all__ = ["FeatureTaps", "default_tap", "tappable_layers"]

# The paper's default: the last feature map before global pooling.
_DEFAULT_TAPS = {
    "resnet": "layer4",
    "resnext": "layer4",
    "wide_resnet": "layer4",
    "mobilenet": "features",
    "efficientnet": "features",
    "densenet": "features",
    # Official NST tap "in5b_bn": block 5b's concatenated branch BN outputs, before the ReLU.
    "inception_bn": "backbone.inc5.in5b.concat_bn",
    "demo_": "block3",
}


def default_tap(name: str) -> str:
    """Default tap of classifier ``name``: its last feature map before global pooling."""
    if name not in available_classifiers():
        raise KeyError(f"unknown classifier '{name}'; available: {', '.join(available_classifiers())}")
    for family, layer in _DEFAULT_TAPS.items():
        if name.startswith(family):
            return layer
    raise KeyError(f"classifier '{name}' has no default tap; name a layer from tappable_layers(model)")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, or ``model`` itself."""
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


def tappable_layers(model: nn.Module) -> List[str]:
    """Names of all submodules of ``model`` that :class:`FeatureTaps` can tap, in forward-definition order."""
    return [name for name, _ in _unwrap(model).named_modules() if name]


def _store(captured, name, module, inputs, output):
    """Forward hook: keep a copy of ``output`` (later in-place ops such as ReLU(inplace) leave it intact)."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"tapped layer '{name}' returns {type(output).__name__}, not a tensor")
    if name in captured:
        raise ValueError(
            f"tapped layer '{name}' runs more than once per forward (a shared module such as a "
            f"reused ReLU); tap a module that runs once"
        )
    captured[name] = output.clone()


class FeatureTaps(nn.Module):
    """Runs ``model`` on images [N, C, H, W] and returns (logits [N, K], {layer: [N, C_l, H_l, W_l]})."""

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        """
        Args:
            model: a classifier (may be wrapped in DistributedDataParallel; names are resolved
                inside the wrapper).
            layers: module names as in ``model.named_modules()``, e.g. "layer4".
        """
        super().__init__()
        self.model = model
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("FeatureTaps needs at least one layer name")
        modules = dict(_unwrap(model).named_modules())
        for layer in self.layers:
            if layer not in modules or not layer:
                close = difflib.get_close_matches(layer, list(modules), n=5, cutoff=0.5)
                top = [n for n in modules if n and "." not in n]
                raise ValueError(
                    f"{type(_unwrap(model)).__name__} has no layer '{layer}'; close names: {close}; "
                    f"top-level layers: {top} (all {len(modules) - 1} names: tappable_layers(model))"
                )
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"tapped layers repeat a name: {self.layers}")

    def forward(self, x) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """x: [N, C, H, W] -> (logits [N, K], {layer: [N, C_l, H_l, W_l]})."""
        captured = {}
        modules = dict(_unwrap(self.model).named_modules())
        handles = [
            modules[layer].register_forward_hook(partial(_store, captured, layer)) for layer in self.layers
        ]
        try:
            logits = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [layer for layer in self.layers if layer not in captured]
        if missing:
            raise ValueError(f"tapped layers {missing} did not run in the forward of {type(_unwrap(self.model)).__name__}")
        return logits, {layer: captured[layer] for layer in self.layers}
