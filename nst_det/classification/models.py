"""Classifiers by name (teachers and students of the classification stage) and their weights.

Every classifier maps images [N, C, H, W] to logits [N, K]. Weights come only from local files;
nothing is downloaded.
"""
import os
from collections import OrderedDict
from typing import Dict

import torch
import torchvision
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from nst_det.inception_bn import InceptionBN, init_xavier_fan_in

__all__ = [
    "InceptionBNClassifier",
    "DemoNet",
    "build_classifier",
    "available_classifiers",
    "load_classifier_state_dict",
]


class InceptionBNClassifier(nn.Module):
    """Inception-BN trunk -> global average pool -> fc: images [N, 3, H, W] -> logits [N, K]."""

    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        # Named "backbone" so that the trunk's keys are those of Detectron2's backbone.
        self.backbone = InceptionBN(in_channels=in_channels, norm="BN", out_features=("inc5",))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.backbone.output_shape()["inc5"].channels, num_classes)
        init_xavier_fan_in(self.fc)

    def forward(self, x):
        """x: [N, 3, H, W] -> logits [N, K]."""
        return self.fc(torch.flatten(self.avgpool(self.backbone(x)["inc5"]), 1))


class DemoNet(nn.Module):
    """Small CNN for the built-in demo on 32x32 digits: [N, C, 32, 32] -> logits [N, K]; its last
    conv map ``block3`` is [N, widths[2], 8, 8] (stride 4) whatever the widths."""

    def __init__(self, num_classes: int, widths=(16, 32, 32), convs_per_block: int = 1, in_channels: int = 3):
        super().__init__()
        blocks = []
        channels = in_channels
        for i, width in enumerate(widths):
            layers = OrderedDict()
            if i > 0:
                layers["pool"] = nn.MaxPool2d(2)
            for j in range(convs_per_block):
                layers[f"conv{j + 1}"] = nn.Conv2d(channels, width, 3, padding=1, bias=False)
                layers[f"bn{j + 1}"] = nn.BatchNorm2d(width)
                layers[f"relu{j + 1}"] = nn.ReLU(inplace=True)
                channels = width
            blocks.append(nn.Sequential(layers))
        self.block1, self.block2, self.block3 = blocks
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_xavier_fan_in(self)

    def forward(self, x):
        """x: [N, C, H, W] -> logits [N, K]."""
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# torchvision's classification models (torchvision.models.list_models) of the families whose last
# feature map nst_det.classification.taps knows (its default tap), built by torchvision's
# get_model.
_TORCHVISION_FAMILIES = ("resnet*", "resnext*", "wide_resnet*", "mobilenet*", "efficientnet*",
                         "densenet*")
_TORCHVISION_NAMES = tuple(torchvision.models.list_models(module=torchvision.models,
                                                          include=_TORCHVISION_FAMILIES))


def _torchvision(builder_name):
    def build(num_classes, in_channels):
        if in_channels != 3:
            raise ValueError(f"torchvision model '{builder_name}' takes 3-channel images, not {in_channels}")
        # weights=None: random init; trained weights come from a local file (``weights=``).
        return torchvision.models.get_model(builder_name, weights=None, num_classes=num_classes)

    return build


_BUILDERS = OrderedDict((name, _torchvision(name)) for name in _TORCHVISION_NAMES)
_BUILDERS["inception_bn"] = lambda num_classes, in_channels: InceptionBNClassifier(num_classes, in_channels)
# Demo teacher: 6 convs, 32-64-128 channels (~0.29M parameters); a narrow student: 3 convs,
# 16-32-32 (~15k).
_BUILDERS["demo_teacher"] = lambda num_classes, in_channels: DemoNet(
    num_classes, widths=(32, 64, 128), convs_per_block=2, in_channels=in_channels
)
_BUILDERS["demo_student"] = lambda num_classes, in_channels: DemoNet(
    num_classes, widths=(16, 32, 32), convs_per_block=1, in_channels=in_channels
)
# The digits demo's student: as demo_student with twice the channels in its last block (16-32-64,
# ~24k parameters), half the teacher's width there, as Inception-BN's 1024 against ResNet-101's 2048.
_BUILDERS["demo_student_wide"] = lambda num_classes, in_channels: DemoNet(
    num_classes, widths=(16, 32, 64), convs_per_block=1, in_channels=in_channels
)


def available_classifiers():
    """Names accepted by :func:`build_classifier`."""
    return list(_BUILDERS)


def build_classifier(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Classifier ``name`` with ``num_classes`` outputs (images [N, in_channels, H, W] -> logits
    [N, num_classes]), randomly initialised (weights are loaded by
    nst_det.engine.checkpointer.load_weights_strictly)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown classifier '{name}'; available: {', '.join(_BUILDERS)}")
    if num_classes < 1:
        raise ValueError(f"classifier '{name}': num_classes must be >= 1, got {num_classes}")
    return _BUILDERS[name](num_classes, in_channels)


_WRAPPER_PREFIXES = ("module.", "model.", "student.")


def load_classifier_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Classifier weights {name: tensor} from a local file: a torchvision state dict, or an nst_det
    classification checkpoint (a dict whose "model" holds them).

    Wrappers are undone, outermost first: "module." (DDP), "model." (FeatureTaps) and "student."
    prefixes shared by all keys are stripped; where some keys start with "student.", only those
    are kept (a teacher's keys next to them are dropped).
    Checkpoints are trusted local files (they may hold optimizer and RNG state), read with pickle.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"classifier weights file not found: {path}")
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else loaded
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} holds no state dict (got {type(loaded).__name__})")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    changed = True
    while changed:
        changed = False
        if any(k.startswith("student.") for k in state):
            state = {k: v for k, v in state.items() if k.startswith("student.")}
        for prefix in _WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                consume_prefix_in_state_dict_if_present(state, prefix)  # in place
                changed = True
    return state
