"""Inception-BN (BN-Inception; Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167): the
paper's student, defined once here and wrapped by both stages: the classifier
(:mod:`nst_det.classification.models`) and the Detectron2 backbones
(:mod:`nst_det.detection.backbone.inception_bn`).

Layers follow the official NST code (MXNet ``symbol/inception_bn.py``): stem conv 7x7/2 -> max pool
-> conv 1x1 -> conv 3x3 -> max pool -> inception blocks 3a, 3b, 3c (stride 2), 4a..4d, 4e (stride 2),
5a, 5b. Every convolution is conv -> BN -> ReLU, named ``conv_<name>`` as in the official symbol;
in a block, the ReLU of each branch's last convolution is applied after the concatenation (the
same values), so that the pre-ReLU concatenation can be tapped.

Stages, named like Detectron2's ``resN`` (stage ``incN`` holds the blocks whose output has stride
2^N, so ``incN`` and ``resN`` share a stride)::

    name   blocks                         stride  channels
    stem   conv1, pool1, conv2_red, conv2    4      192
    inc3   pool2, in3a, in3b                 8      320
    inc4   in3c, in4a, in4b, in4c, in4d     16      608
    inc5   in4e, in5a, in5b                 32     1024

The official NST tap ``in5b_bn`` (the concatenated, pre-ReLU BN outputs of block 5b's four
branches, 352+320+224+128 = 1024 channels, 7x7 at 224 input) is the output of the module
``inc5.in5b.concat_bn`` (an ``nn.Identity``; every block has one).

Differences from the official symbol, all for Detectron2 and none changing the channel table:
max pools 1 and 2 pad by 1 (as Detectron2's ResNet stem) so every stage has size ceil(H / stride)
and FPN levels line up (MXNet's 'valid' pooling gives 55x55 / 27x27 instead of 56x56 / 28x28 at
224 input; 5b is 7x7 either way); convolutions have no bias (the following BN has one); the input
BN layer ``bn_data`` is left out: inputs are normalised outside the network (torchvision
``Normalize`` in classification, ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` in Detectron2).
"""
import math
from collections import OrderedDict
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import nst_det.engine  # noqa: F401  (first: Detectron2 made usable on this stack)
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import Backbone

__all__ = [
    "InceptionSpec",
    "INCEPTION_BN_STAGES",
    "STAGE_NAMES",
    "InceptionBlock",
    "InceptionReductionBlock",
    "InceptionBN",
    "init_xavier_fan_in",
]


class InceptionSpec(NamedTuple):
    """Channels of one inception block; ``num_1x1 == 0`` marks a stride-2 reduction block."""

    name: str
    num_1x1: int
    num_3x3_reduce: int
    num_3x3: int
    num_double_3x3_reduce: int
    num_double_3x3: int
    pool: str  # "avg" or "max" before the projection; reduction blocks always max-pool
    num_proj: int


# The official channel table (MXNet symbol_inception-bn / NST symbol/inception_bn.py).
INCEPTION_BN_STAGES = OrderedDict(
    inc3=[
        InceptionSpec("in3a", 64, 64, 64, 64, 96, "avg", 32),
        InceptionSpec("in3b", 64, 64, 96, 64, 96, "avg", 64),
    ],
    inc4=[
        InceptionSpec("in3c", 0, 128, 160, 64, 96, "max", 0),
        InceptionSpec("in4a", 224, 64, 96, 96, 128, "avg", 128),
        InceptionSpec("in4b", 192, 96, 128, 96, 128, "avg", 128),
        InceptionSpec("in4c", 160, 128, 160, 128, 160, "avg", 128),
        InceptionSpec("in4d", 96, 128, 192, 160, 192, "avg", 128),
    ],
    inc5=[
        InceptionSpec("in4e", 0, 128, 192, 192, 256, "max", 0),
        InceptionSpec("in5a", 352, 192, 320, 160, 224, "avg", 128),
        InceptionSpec("in5b", 352, 192, 320, 192, 224, "max", 128),
    ],
)
STAGE_NAMES = ("stem",) + tuple(INCEPTION_BN_STAGES)
_STEM_CHANNELS = 192


def _conv_bn(in_channels, out_channels, kernel_size, norm, stride=1, relu=True):
    """conv kxk -> norm (-> ReLU); padding keeps the size at stride 1: [N, C_in, H, W] -> [N, C_out, H/s, W/s]."""
    return Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        bias=False,
        norm=get_norm(norm, out_channels),
        activation=F.relu_ if relu else None,
    )


class InceptionBlock(nn.Module):
    """Stride-1 block: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | pool -> 1x1 proj, concatenated, ReLU."""

    def __init__(self, in_channels: int, spec: InceptionSpec, norm: str):
        super().__init__()
        if spec.pool not in ("avg", "max"):
            raise ValueError(f"inception block {spec.name}: pool must be 'avg' or 'max', got {spec.pool!r}")
        self.conv_1x1 = _conv_bn(in_channels, spec.num_1x1, 1, norm, relu=False)
        self.conv_3x3_reduce = _conv_bn(in_channels, spec.num_3x3_reduce, 1, norm)
        self.conv_3x3 = _conv_bn(spec.num_3x3_reduce, spec.num_3x3, 3, norm, relu=False)
        self.conv_double_3x3_reduce = _conv_bn(in_channels, spec.num_double_3x3_reduce, 1, norm)
        self.conv_double_3x3_0 = _conv_bn(spec.num_double_3x3_reduce, spec.num_double_3x3, 3, norm)
        self.conv_double_3x3_1 = _conv_bn(spec.num_double_3x3, spec.num_double_3x3, 3, norm, relu=False)
        if spec.pool == "avg":
            self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        else:
            self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.conv_proj = _conv_bn(in_channels, spec.num_proj, 1, norm, relu=False)
        # Tap point: the pre-ReLU concatenation of the branch BN outputs (official "in<block>_bn").
        self.concat_bn = nn.Identity()
        self.out_channels = spec.num_1x1 + spec.num_3x3 + spec.num_double_3x3 + spec.num_proj
        self.stride = 1

    def forward(self, x):
        """[N, C_in, H, W] -> [N, C_out, H, W]."""
        branches = [
            self.conv_1x1(x),
            self.conv_3x3(self.conv_3x3_reduce(x)),
            self.conv_double_3x3_1(self.conv_double_3x3_0(self.conv_double_3x3_reduce(x))),
            self.conv_proj(self.pool(x)),
        ]
        return F.relu(self.concat_bn(torch.cat(branches, dim=1)))


class InceptionReductionBlock(nn.Module):
    """Stride-2 block: 1x1 -> 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool 3x3/2, concatenated, ReLU."""

    def __init__(self, in_channels: int, spec: InceptionSpec, norm: str):
        super().__init__()
        self.conv_3x3_reduce = _conv_bn(in_channels, spec.num_3x3_reduce, 1, norm)
        self.conv_3x3 = _conv_bn(spec.num_3x3_reduce, spec.num_3x3, 3, norm, stride=2, relu=False)
        self.conv_double_3x3_reduce = _conv_bn(in_channels, spec.num_double_3x3_reduce, 1, norm)
        self.conv_double_3x3_0 = _conv_bn(spec.num_double_3x3_reduce, spec.num_double_3x3, 3, norm)
        self.conv_double_3x3_1 = _conv_bn(
            spec.num_double_3x3, spec.num_double_3x3, 3, norm, stride=2, relu=False
        )
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        # The pooled branch is already >= 0 (its input is post-ReLU), so the final ReLU leaves it as is.
        self.concat_bn = nn.Identity()
        self.out_channels = spec.num_3x3 + spec.num_double_3x3 + in_channels
        self.stride = 2

    def forward(self, x):
        """[N, C_in, H, W] -> [N, C_out, ceil(H/2), ceil(W/2)]."""
        branches = [
            self.conv_3x3(self.conv_3x3_reduce(x)),
            self.conv_double_3x3_1(self.conv_double_3x3_0(self.conv_double_3x3_reduce(x))),
            self.pool(x),
        ]
        return F.relu(self.concat_bn(torch.cat(branches, dim=1)))


def init_xavier_fan_in(module: nn.Module) -> None:
    """Official init: conv / linear weights ~ N(0, 2 / fan_in) (MXNet Xavier gaussian, fan-in,
    magnitude 2, i.e. He normal), biases 0, BN scale 1 and shift 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()  # C_in * kh * kw (conv) or C_in (linear)
            nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class InceptionBN(Backbone):
    """Inception-BN trunk: images [N, 3, H, W] -> {stage: [N, C, ceil(H/s), ceil(W/s)]} for the
    stages in ``out_features`` (table in the module docstring)."""

    def __init__(
        self,
        in_channels: int = 3,
        norm: str = "BN",
        out_features: Sequence[str] = ("inc5",),
        freeze_at: int = 0,
    ):
        """
        Args:
            in_channels: channels of the input images.
            norm: Detectron2 norm name after every convolution ("BN", "FrozenBN", "SyncBN", ...).
            out_features: stages to return, a subset of ``STAGE_NAMES``; stages after the last one
                asked for are not built (as Detectron2's ResNet).
            freeze_at: number of leading stages to freeze (0: none, 1: stem, 2: stem + inc3, ...).
        """
        super().__init__()
        out_features = list(out_features)
        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if not out_features or unknown:
            raise ValueError(
                f"Inception-BN out_features {out_features} must be a non-empty subset of {list(STAGE_NAMES)}"
            )
        if not 0 <= freeze_at <= len(STAGE_NAMES):
            raise ValueError(f"Inception-BN freeze_at={freeze_at} must be in [0, {len(STAGE_NAMES)}]")
        self._in_channels = in_channels
        self._out_features = sorted(out_features, key=STAGE_NAMES.index)
        num_stages = STAGE_NAMES.index(self._out_features[-1]) + 1

        self.stem = nn.Sequential(
            OrderedDict(
                conv1=_conv_bn(in_channels, 64, 7, norm, stride=2),
                pool1=nn.MaxPool2d(3, stride=2, padding=1),
                conv2_red=_conv_bn(64, 64, 1, norm),
                conv2=_conv_bn(64, _STEM_CHANNELS, 3, norm),
            )
        )
        channels, stride = _STEM_CHANNELS, 4
        self._out_feature_channels = {"stem": channels}
        self._out_feature_strides = {"stem": stride}
        self.stage_names = list(STAGE_NAMES[:num_stages])
        for stage_name in self.stage_names[1:]:
            blocks = OrderedDict()
            if stage_name == "inc3":
                blocks["pool2"] = nn.MaxPool2d(3, stride=2, padding=1)
                stride *= 2
            for spec in INCEPTION_BN_STAGES[stage_name]:
                block_type = InceptionReductionBlock if spec.num_1x1 == 0 else InceptionBlock
                block = block_type(channels, spec, norm)
                blocks[spec.name] = block
                channels, stride = block.out_channels, stride * block.stride
            self.add_module(stage_name, nn.Sequential(blocks))
            self._out_feature_channels[stage_name] = channels
            self._out_feature_strides[stage_name] = stride

        init_xavier_fan_in(self)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int = 0):
        """Freeze the first ``freeze_at`` stages: no gradient, BN turned into FrozenBatchNorm2d."""
        for stage_name in self.stage_names[:freeze_at]:
            stage = getattr(self, stage_name)
            for p in stage.parameters():
                p.requires_grad = False
            FrozenBatchNorm2d.convert_frozen_batchnorm(stage)
        return self

    def forward(self, x):
        """x: [N, C_in, H, W] -> {name: [N, C, ceil(H/stride), ceil(W/stride)]} for ``out_features``."""
        if x.dim() != 4 or x.shape[1] != self._in_channels:
            raise ValueError(
                f"Inception-BN expects images [N, {self._in_channels}, H, W], got {tuple(x.shape)}"
            )
        outputs = {}
        for stage_name in self.stage_names:
            x = getattr(self, stage_name)(x)
            if stage_name in self._out_features:
                outputs[stage_name] = x
        return outputs

    def output_shape(self):
        """{name: ShapeSpec(channels, stride)} of ``out_features``."""
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }
