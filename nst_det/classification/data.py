"""Data of the classification stage: ImageNet class folders and the built-in digits demo set.

``build_cls_dataset(cfg, train)`` gives the training or the validation set;
``build_train_loader`` shards the training set over the processes with a seeded
``DistributedSampler`` (one permutation per epoch, so a run resumed at an epoch boundary sees the
same images in the same order); ``build_val_loader`` shards the validation set without padding
(Detectron2's ``InferenceSampler``) so every image counts once. ``pin_memory`` of both loaders is
for a CUDA ``MODEL.DEVICE`` only.

ImageNet is refused when it cannot give correct labels: train/ and val/ with different class
folders, or a ``MODEL.NUM_CLASSES`` other than the number of class folders. An unreadable image
(truncated JPEG, not an image) is named: training skips it with a warning and takes the next
index instead (the same choice in every run, so ``--resume`` stays exact); validation stops.
"""
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data.samplers import InferenceSampler
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import datasets
from torchvision.datasets.folder import find_classes

from nst_det.engine.config_paths import missing_path_message
from nst_det.engine.distill_config import _check_number

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DIGITS_NUM_TRAIN",
    "DigitsDataset",
    "ImageNetFolder",
    "Lighting",
    "UnreadableImageError",
    "build_imagenet_dataset",
    "build_cls_dataset",
    "build_train_loader",
    "build_val_loader",
    "imagenet_root",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The fixed split of scikit-learn's 1797 digits: the first 1297 of a seeded permutation train,
# the last 500 validate.
DIGITS_NUM_TRAIN = 1297
DIGITS_SPLIT_SEED = 0
DATASETS_README = "datasets/README.md"
# How many unreadable training images in a row (index, index + 1, ...) are skipped before the
# data set is declared damaged.
MAX_SKIPPED_IN_A_ROW = 16


class Lighting:
    """AlexNet's PCA lighting noise, as in fb.resnet.torch (``datasets/transforms.lua``,
    ``Lighting``; the eigen-decomposition of ImageNet's RGB covariance from
    ``datasets/imagenet.lua``), the training augmentation of the official NST code.

    Per image, ``alpha ~ N(0, std)`` is drawn for each of the 3 eigenvectors and every pixel gets
    ``rgb += eigvec @ (alpha * eigval)`` (column j of ``eigvec`` is eigenvector j). Applied to the
    [3, H, W] tensor in [0, 1] (after ``ToTensor``, before ``Normalize``), not clamped; ``std`` 0
    leaves it unchanged. ``generator``: a ``torch.Generator`` to draw ``alpha`` from
    (default: torch's global RNG, seeded per data-loading worker).
    """

    EIGVAL = (0.2175, 0.0188, 0.0045)
    EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))

    def __init__(self, std: float, generator=None):
        if not std >= 0:
            raise ValueError(f"Lighting std is {std!r}: it must be >= 0 (0 = off)")
        self.std = float(std)
        self.generator = generator
        self.eigval = torch.tensor(self.EIGVAL)
        self.eigvec = torch.tensor(self.EIGVEC)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3, generator=self.generator) * self.std
        rgb = self.eigvec @ (alpha * self.eigval)
        return image + rgb.to(image.dtype)[:, None, None]

    def __repr__(self):
        return f"{type(self).__name__}(std={self.std})"


class UnreadableImageError(OSError):
    """An image file that PIL cannot read (truncated, corrupt, not an image), named in the
    message."""


class ImageNetFolder(datasets.ImageFolder):
    """torchvision's ``ImageFolder`` whose unreadable images are named.

    ``train=True``: an unreadable image is skipped with a warning naming the file (once per file
    and process) and item ``i`` becomes the next readable one, ``i + 1``, ``i + 2``, ... (wrapping
    around): deterministic, so a resumed run sees the same images. ``train=False``: an
    :class:`UnreadableImageError` naming the file.
    """

    def __init__(self, root: str, transform=None, train: bool = True):
        super().__init__(root, transform=transform)
        self.train = train
        self._skipped = set()

    def _read(self, index):
        path, target = self.samples[index]
        try:
            return self.loader(path), target
        except (OSError, SyntaxError) as e:  # PIL: truncated file, unknown format, broken chunk
            raise UnreadableImageError(f"image '{path}' is truncated or unreadable "
                                       f"({type(e).__name__}: {e})") from e

    def __getitem__(self, index):
        """``(image [3, H, W] float, class index)`` of image ``index`` (or, in training, of the
        next readable one)."""
        n = len(self.samples)
        for offset in range(min(n, MAX_SKIPPED_IN_A_ROW + 1)):
            i = (index + offset) % n
            try:
                image, target = self._read(i)
            except UnreadableImageError as e:
                if not self.train:
                    raise UnreadableImageError(f"validation {e}: every validation image counts; "
                                               f"replace or remove the file") from e
                path = self.samples[i][0]
                if path not in self._skipped:
                    self._skipped.add(path)
                    logger.warning(f"training {e}: skipped, the next image is used in its place")
                continue
            if self.transform is not None:
                image = self.transform(image)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return image, target
        raise UnreadableImageError(
            f"{min(n, MAX_SKIPPED_IN_A_ROW + 1)} training images in a row from "
            f"'{self.samples[index][0]}' are unreadable: the data set under '{self.root}' looks "
            f"damaged (an interrupted copy or extraction?)")


def _class_folders(path: str):
    """Class folder names of one split, as ImageFolder finds them (torchvision's find_classes:
    sorted sub-folders); [] where there is none."""
    try:
        return find_classes(path)[0]
    except FileNotFoundError:  # find_classes: "Couldn't find any class folder"
        return []


def _few(names, k: int = 8) -> str:
    shown = ", ".join(names[:k])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > k else ''}]"


def _check_same_classes(root: str) -> None:
    """ValueError naming both folders and the classes found in one only, when train/ and val/
    (both present) hold different class folders."""
    train_path, val_path = os.path.join(root, "train"), os.path.join(root, "val")
    if not (os.path.isdir(train_path) and os.path.isdir(val_path)):
        return
    train, val = _class_folders(train_path), _class_folders(val_path)
    if train == val:
        return
    only = [f"only in {split}/: {_few(sorted(set(a) - set(b)))}"
            for split, a, b in (("train", train, val), ("val", val, train)) if set(a) - set(b)]
    raise ValueError(
        f"ImageNet class folders differ between '{train_path}' ({len(train)} folders) and "
        f"'{val_path}' ({len(val)} folders): {'; '.join(only)}. A label is the position of its "
        f"folder name in sorted order, so both splits need the same class folders (see "
        f"{DATASETS_README})")


def imagenet_root(cfg_root: str = "") -> str:
    """DATA.ROOT, else $NST_DATASETS/imagenet, else ./datasets/imagenet."""
    if cfg_root:
        return cfg_root
    return os.path.join(os.environ.get("NST_DATASETS", "datasets"), "imagenet")


def build_imagenet_dataset(root: str, train: bool, crop_size: int = 224, resize_size: int = 256,
                           color_jitter: float = 0.0, lighting_std: float = 0.0):
    """:class:`ImageNetFolder` of ``root/train`` or ``root/val`` with the usual transforms.

    train: RandomResizedCrop ``crop_size``, ColorJitter(brightness, contrast, saturation =
    ``color_jitter``) when > 0, horizontal flip, ToTensor, :class:`Lighting` ``lighting_std`` when
    > 0; val: Resize ``resize_size`` + CenterCrop ``crop_size``, ToTensor; both then normalised
    with the ImageNet mean/std. Images come out as float [3, crop_size, crop_size]. train/ and val/
    (where both exist) must hold the same class folders.
    """
    from torchvision import transforms

    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"ImageNet root '{root}' does not exist (set DATA.ROOT or $NST_DATASETS); "
            f"see {DATASETS_README} for the expected train/ and val/ layout")
    if train:
        split = "train"
        steps = [transforms.RandomResizedCrop(crop_size)]
        if color_jitter > 0:
            steps.append(transforms.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                                                saturation=color_jitter))
        steps += [transforms.RandomHorizontalFlip(), transforms.ToTensor()]
        if lighting_std > 0:
            steps.append(Lighting(lighting_std))
    else:
        split = "val"
        steps = [transforms.Resize(resize_size), transforms.CenterCrop(crop_size),
                 transforms.ToTensor()]
    transform = transforms.Compose(steps + [transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"ImageNet split folder '{path}' does not exist; see {DATASETS_README} for the "
            f"expected layout ({root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG)")
    try:
        dataset = ImageNetFolder(path, transform=transform, train=train)
    except FileNotFoundError as e:  # no class folder, or class folders without images
        raise ValueError(f"ImageNet split '{path}' is empty: {e}") from e
    if len(dataset) == 0:
        raise ValueError(f"ImageNet split '{path}' is empty: no image in its class folders")
    _check_same_classes(root)
    return dataset


class DigitsDataset(Dataset):
    """scikit-learn's bundled handwritten digits (real 8x8 scans, 10 classes), upsampled.

    Each item is ``(image [3, S, S] float, label int)`` with S = ``size``: the 8x8 scan scaled to
    [0, 1], bilinearly upsampled to S x S, repeated over 3 channels and normalised with mean 0.5 /
    std 0.5. ``train=True`` adds a random shift of up to ``size // 8`` pixels (pad + random crop).
    The split is fixed: 1297 training and 500 validation images.
    """

    def __init__(self, train: bool, size: int = 32):
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(digits.target))
        index = order[:DIGITS_NUM_TRAIN] if train else order[DIGITS_NUM_TRAIN:]
        images = torch.from_numpy(digits.images[index]).float().div_(16.0)[:, None]
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        self.images = images.sub_(0.5).div_(0.5).expand(-1, 3, -1, -1).contiguous()
        self.labels = torch.from_numpy(digits.target[index]).long()
        self.index = index  # positions in sklearn's load_digits()
        self.train = train
        self.shift = size // 8
        self.classes = [str(c) for c in range(10)]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = self.images[i]
        if self.train and self.shift > 0:
            pad = self.shift
            padded = F.pad(image, (pad, pad, pad, pad), value=-1.0)  # -1 = blank after normalising
            dy, dx = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            image = padded[:, dy:dy + image.shape[1], dx:dx + image.shape[2]]
        return image, int(self.labels[i])


def _check_augmentation(cfg) -> None:
    """ValueError naming the key for a DATA.COLOR_JITTER or DATA.LIGHTING_STD that is not a finite
    number >= 0."""
    for key in ("COLOR_JITTER", "LIGHTING_STD"):
        _check_number(f"DATA.{key}", cfg.DATA[key], lambda v: v >= 0,
                      "it must be a finite number >= 0 (0 = off)")


def build_cls_dataset(cfg, train: bool):
    """The training (``train=True``) or validation data set named by ``cfg.DATA.NAME``; its number
    of classes must be ``cfg.MODEL.NUM_CLASSES``. DATA.COLOR_JITTER and DATA.LIGHTING_STD (ImageNet
    training only) must be finite numbers >= 0."""
    _check_augmentation(cfg)
    name = cfg.DATA.NAME
    if name == "imagenet":
        if cfg.DATA.ROOT and not os.path.isdir(cfg.DATA.ROOT):
            raise FileNotFoundError(
                f"{missing_path_message('DATA.ROOT', cfg.DATA.ROOT, what='ImageNet root')}; see "
                f"{DATASETS_README} for the expected train/ and val/ layout")
        dataset = build_imagenet_dataset(imagenet_root(cfg.DATA.ROOT), train,
                                         crop_size=cfg.DATA.CROP_SIZE,
                                         resize_size=cfg.DATA.RESIZE_SIZE,
                                         color_jitter=cfg.DATA.COLOR_JITTER,
                                         lighting_std=cfg.DATA.LIGHTING_STD)
        where = f"'{dataset.root}' has {len(dataset.classes)} class folders"
    elif name == "demo_digits":
        dataset = DigitsDataset(train=train, size=cfg.DATA.IMAGE_SIZE)
        where = f"the demo_digits data set has {len(dataset.classes)} classes"
    else:
        raise KeyError(f"DATA.NAME '{name}' is unknown; known: 'imagenet', 'demo_digits'")
    if len(dataset.classes) != cfg.MODEL.NUM_CLASSES:
        raise ValueError(f"MODEL.NUM_CLASSES is {cfg.MODEL.NUM_CLASSES} but {where}: set "
                         f"MODEL.NUM_CLASSES {len(dataset.classes)}")
    return dataset


def _check_not_empty(dataset, what):
    if len(dataset) == 0:
        raise ValueError(f"{what} data set {type(dataset).__name__} is empty")


def build_train_loader(dataset, batch_per_process: int, num_workers: int, seed: int,
                       pin_memory: bool = False):
    """Loader of this process's shard of ``dataset``; call ``loader.sampler.set_epoch(e)`` per epoch.

    Shuffles with a permutation that depends only on (``seed``, epoch); drops the last incomplete
    batch. Data-worker seeds are drawn from torch's global RNG, which checkpoints save and restore.
    """
    _check_not_empty(dataset, "training")
    sampler = DistributedSampler(dataset, num_replicas=comm.get_world_size(),
                                 rank=comm.get_rank(), shuffle=True, seed=seed)
    if len(sampler) < batch_per_process:
        raise ValueError(
            f"training data set of {len(dataset)} images gives each of {comm.get_world_size()} "
            f"processes {len(sampler)} images, fewer than its batch of {batch_per_process}")
    return DataLoader(dataset, batch_size=batch_per_process, sampler=sampler,
                      num_workers=num_workers, drop_last=True, pin_memory=pin_memory)


def build_val_loader(dataset, batch_per_process: int, num_workers: int, pin_memory: bool = False):
    """Loader of this process's shard of ``dataset`` in order, each image in exactly one shard.
    ``pin_memory``: page-locked batches, for a CUDA device only."""
    _check_not_empty(dataset, "validation")
    return DataLoader(dataset, batch_size=batch_per_process, sampler=InferenceSampler(len(dataset)),
                      num_workers=num_workers, drop_last=False, pin_memory=pin_memory)
