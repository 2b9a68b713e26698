"""Classifier weights -> Detectron2 backbone weights (what ``MODEL.WEIGHTS`` loads).

- torchvision ResNet family (resnet*, resnext*, wide_resnet*) -> Detectron2's ``build_resnet_backbone``
  names: ``conv1``/``bn1`` -> ``stem.conv1`` / ``stem.conv1.norm``; ``layer<i>.<j>.conv<k>`` /
  ``bn<k>`` -> ``res<i+1>.<j>.conv<k>`` / ``.conv<k>.norm``; ``downsample.0`` / ``downsample.1`` ->
  ``shortcut`` / ``shortcut.norm``. torchvision strides in the 3x3 conv: the Detectron2 config must
  set ``MODEL.RESNETS.STRIDE_IN_1X1 False`` (see :func:`d2_config_hints`).
- Inception-BN classifier (``nst_det.classification.models.InceptionBNClassifier``): its trunk is
  the Detectron2 backbone itself, so only the prefix changes (``backbone.`` -> the target prefix).

The classifier's ``fc`` and BN ``num_batches_tracked`` counters are dropped. Keys are prefixed
``backbone.`` (plain backbone) or ``backbone.bottom_up.`` (FPN backbone). The result is
``{"model": {name: numpy array}, "__author__": "nst_det", "matching_heuristics": False}``, the
Detectron2 model-zoo layout, which ``DetectionCheckpointer`` loads by exact names.
"""
import os
import pickle
import re
from typing import Dict, Optional

import torch

from nst_det.classification.models import load_classifier_state_dict

__all__ = [
    "RESNET_BLOCKS",
    "detect_arch",
    "resnet_to_d2",
    "inception_bn_to_d2",
    "convert_classifier_to_d2",
    "d2_config_hints",
    "save_d2_weights",
    "convert_checkpoint",
]

# Classifier name -> (blocks per stage, bottleneck, groups, width per group) of torchvision's ResNets.
RESNET_BLOCKS = {
    "resnet18": ([2, 2, 2, 2], False, 1, 64),
    "resnet34": ([3, 4, 6, 3], False, 1, 64),
    "resnet50": ([3, 4, 6, 3], True, 1, 64),
    "resnet101": ([3, 4, 23, 3], True, 1, 64),
    "resnet152": ([3, 8, 36, 3], True, 1, 64),
    "resnext50_32x4d": ([3, 4, 6, 3], True, 32, 4),
    "resnext101_32x8d": ([3, 4, 23, 3], True, 32, 8),
    "wide_resnet50_2": ([3, 4, 6, 3], True, 1, 128),
    "wide_resnet101_2": ([3, 4, 23, 3], True, 1, 128),
}
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
_DROPPED = re.compile(r"^fc\.|\.num_batches_tracked$|^num_batches_tracked$")


def detect_arch(state_dict: Dict[str, torch.Tensor]) -> str:
    """"inception_bn" or the torchvision ResNet name whose blocks and widths fit ``state_dict``."""
    if "backbone.stem.conv1.weight" in state_dict:
        return "inception_bn"
    if "layer1.0.conv1.weight" not in state_dict:
        raise ValueError(
            "cannot tell the architecture of these weights: neither an Inception-BN classifier "
            f"('backbone.stem.conv1.weight') nor a torchvision ResNet ('layer1.0.conv1.weight'); "
            f"first keys: {list(state_dict)[:5]}"
        )
    blocks = [len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    bottleneck = "layer1.0.conv3.weight" in state_dict
    conv2 = state_dict["layer1.0.conv2.weight"]
    groups = conv2.shape[0] // conv2.shape[1]
    width = conv2.shape[0] // groups
    for name, spec in RESNET_BLOCKS.items():
        if spec == (blocks, bottleneck, groups, width):
            return name
    raise ValueError(
        f"ResNet weights with blocks {blocks}, bottleneck={bottleneck}, groups={groups}, width {width} "
        f"match none of {list(RESNET_BLOCKS)}"
    )


def _rename_keys(state_dict, rename, source: str) -> Dict[str, torch.Tensor]:
    """{rename(key): value} without fc and BN counters; keys ``rename`` maps to None are errors."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        if _DROPPED.search(key):
            continue
        new = rename(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"{len(unknown)} keys are not part of {source}: {unknown[:5]}")
    return out


def resnet_to_d2(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision ResNet names -> Detectron2 ResNet names (no prefix); drops fc."""
    return _rename_keys(state_dict, _resnet_key_to_d2, "a torchvision ResNet")


def _resnet_key_to_d2(key: str) -> Optional[str]:
    """One torchvision ResNet key -> its Detectron2 name, or None if it is not a ResNet key."""
    m = re.fullmatch(r"conv1\.weight", key)
    if m:
        return "stem.conv1.weight"
    m = re.fullmatch(r"bn1\.(\w+)", key)
    if m and m.group(1) in _BN_FIELDS:
        return f"stem.conv1.norm.{m.group(1)}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", key)
    if not m:
        return None
    stage = f"res{int(m.group(1)) + 1}.{m.group(2)}"
    rest = m.group(3)
    m = re.fullmatch(r"conv(\d)\.weight", rest)
    if m:
        return f"{stage}.conv{m.group(1)}.weight"
    m = re.fullmatch(r"bn(\d)\.(\w+)", rest)
    if m and m.group(2) in _BN_FIELDS:
        return f"{stage}.conv{m.group(1)}.norm.{m.group(2)}"
    if rest == "downsample.0.weight":
        return f"{stage}.shortcut.weight"
    m = re.fullmatch(r"downsample\.1\.(\w+)", rest)
    if m and m.group(1) in _BN_FIELDS:
        return f"{stage}.shortcut.norm.{m.group(1)}"
    return None


def inception_bn_to_d2(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Inception-BN classifier names -> Detectron2 backbone names (no prefix); drops fc."""
    prefix = "backbone."
    return _rename_keys(
        state_dict, lambda k: k[len(prefix):] if k.startswith(prefix) else None, "an Inception-BN classifier"
    )


def convert_classifier_to_d2(
    state_dict: Dict[str, torch.Tensor], arch: Optional[str] = None, fpn: bool = False
) -> dict:
    """Classifier weights -> ``{"model": {"backbone[.bottom_up].<name>": array}, "__author__": "nst_det",
    "matching_heuristics": False}``. ``arch`` (a classifier name) is checked against the weights;
    None detects it."""
    detected = detect_arch(state_dict)
    if arch is not None and arch != detected:
        if arch != "inception_bn" and arch not in RESNET_BLOCKS:
            raise ValueError(
                f"no Detectron2 backbone for classifier '{arch}'; convertible: "
                f"{['inception_bn'] + list(RESNET_BLOCKS)}"
            )
        raise ValueError(f"arch '{arch}' was asked for but the weights are those of {detected}")
    backbone = inception_bn_to_d2(state_dict) if detected == "inception_bn" else resnet_to_d2(state_dict)
    prefix = "backbone.bottom_up." if fpn else "backbone."
    model = {prefix + k: v.detach().cpu().numpy() for k, v in backbone.items()}
    return {"model": model, "__author__": "nst_det", "matching_heuristics": False}


def d2_config_hints(arch: str, fpn: bool = False) -> Dict[str, object]:
    """Detectron2 config values that the converted ``arch`` backbone needs (names: cfg keys).

    Assumes the classifier was trained on RGB images normalised with ImageNet mean / std
    (torchvision's convention, the classification stage's default)."""
    hints = {
        "INPUT.FORMAT": "RGB",
        "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
        "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    }
    if arch == "inception_bn":
        hints["MODEL.BACKBONE.NAME"] = (
            "build_inception_bn_fpn_backbone" if fpn else "build_inception_bn_backbone"
        )
        hints["MODEL.INCEPTION_BN.OUT_FEATURES"] = ["stem", "inc3", "inc4", "inc5"]
        if fpn:
            hints["MODEL.FPN.IN_FEATURES"] = ["stem", "inc3", "inc4", "inc5"]
        return hints
    if arch not in RESNET_BLOCKS:
        raise ValueError(f"no Detectron2 backbone for classifier '{arch}'")
    blocks, bottleneck, groups, width = RESNET_BLOCKS[arch]
    hints["MODEL.BACKBONE.NAME"] = "build_resnet_fpn_backbone" if fpn else "build_resnet_backbone"
    # Detectron2 names a ResNet by its depth; ResNeXt and wide ResNets share their ResNet's depth.
    hints["MODEL.RESNETS.DEPTH"] = {2: 18, 6: 34 if not bottleneck else 50, 23: 101, 36: 152}[blocks[2]]
    hints["MODEL.RESNETS.STEM_OUT_CHANNELS"] = 64  # torchvision's stem
    hints["MODEL.RESNETS.STRIDE_IN_1X1"] = False
    hints["MODEL.RESNETS.NUM_GROUPS"] = groups
    hints["MODEL.RESNETS.WIDTH_PER_GROUP"] = width
    hints["MODEL.RESNETS.RES2_OUT_CHANNELS"] = 64 if not bottleneck else 256
    hints["MODEL.RESNETS.OUT_FEATURES"] = ["res2", "res3", "res4", "res5"] if fpn else ["res4"]
    if fpn:
        hints["MODEL.FPN.IN_FEATURES"] = ["res2", "res3", "res4", "res5"]
    return hints


def save_d2_weights(converted: dict, path: str) -> None:
    """Write ``converted`` as .pkl (pickle of numpy arrays, Detectron2 model-zoo style) or .pth (torch tensors)."""
    from nst_det.engine.atomic import atomic_save, atomic_write

    if path.endswith(".pkl"):
        atomic_write(path, lambda f: pickle.dump(converted, f))
    elif path.endswith(".pth"):
        as_tensors = dict(converted, model={k: torch.from_numpy(v) for k, v in converted["model"].items()})
        atomic_save(as_tensors, path)
    else:
        raise ValueError(f"output file {path} must end in .pkl or .pth")


def convert_checkpoint(src: str, dst: str, arch: Optional[str] = None, fpn: bool = False) -> str:
    """Read classifier weights ``src`` (torchvision state dict or nst_det checkpoint), write Detectron2
    backbone weights ``dst``; returns the architecture (``arch`` or the detected one)."""
    if not (dst.endswith(".pkl") or dst.endswith(".pth")):
        raise ValueError(f"output file {dst} must end in .pkl or .pth")
    try:
        state_dict = load_classifier_state_dict(src)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch.load / pickle raise many types for a file that is no checkpoint
        raise ValueError(f"classifier weights file '{src}' is not a checkpoint or state dict that "
                         f"torch.load can read ({type(e).__name__}: {e})") from e
    converted = convert_classifier_to_d2(state_dict, arch=arch, fpn=fpn)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    save_d2_weights(converted, dst)
    return arch or detect_arch(state_dict)
