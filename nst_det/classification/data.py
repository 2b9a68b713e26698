"""Data of the classification stage: ImageNet class folders and the built-in digits demo set.

``build_cls_dataset(cfg, train)`` gives the training or the validation set;
``build_train_loader`` shards the training set over the processes with a seeded
``DistributedSampler`` (one permutation per epoch, so a run resumed at an epoch boundary sees the
same images in the same order); ``build_val_loader`` shards the validation set without padding
(Detectron2's ``InferenceSampler``) so every image counts once.
"""
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data.samplers import InferenceSampler
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DIGITS_NUM_TRAIN",
    "DigitsDataset",
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


def imagenet_root(cfg_root: str = "") -> str:
    """DATA.ROOT, else $NST_DATASETS/imagenet, else ./datasets/imagenet."""
    if cfg_root:
        return cfg_root
    return os.path.join(os.environ.get("NST_DATASETS", "datasets"), "imagenet")


def build_imagenet_dataset(root: str, train: bool):
    """torchvision ``ImageFolder`` of ``root/train`` or ``root/val`` with the usual transforms.

    train: RandomResizedCrop 224 + horizontal flip; val: Resize 256 + CenterCrop 224; both
    normalised with the ImageNet mean/std. Images come out as float [3, 224, 224].
    """
    from torchvision import datasets, transforms

    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"ImageNet root '{root}' does not exist (set DATA.ROOT or $NST_DATASETS); "
            f"see {DATASETS_README} for the expected train/ and val/ layout")
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        split, transform = "train", transforms.Compose([
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ])
    else:
        split, transform = "val", transforms.Compose([
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            normalize,
        ])
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"ImageNet split folder '{path}' does not exist; see {DATASETS_README} for the "
            f"expected layout ({root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG)")
    try:
        dataset = datasets.ImageFolder(path, transform=transform)
    except FileNotFoundError as e:  # no class folder, or class folders without images
        raise ValueError(f"ImageNet split '{path}' is empty: {e}") from e
    if len(dataset) == 0:
        raise ValueError(f"ImageNet split '{path}' is empty: no image in its class folders")
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


def build_cls_dataset(cfg, train: bool):
    """The training (``train=True``) or validation data set named by ``cfg.DATA.NAME``."""
    name = cfg.DATA.NAME
    if name == "imagenet":
        return build_imagenet_dataset(imagenet_root(cfg.DATA.ROOT), train)
    if name == "demo_digits":
        return DigitsDataset(train=train, size=cfg.DATA.IMAGE_SIZE)
    raise KeyError(f"DATA.NAME '{name}' is unknown; known: 'imagenet', 'demo_digits'")


def _check_not_empty(dataset, what):
    if len(dataset) == 0:
        raise ValueError(f"{what} data set {type(dataset).__name__} is empty")


def build_train_loader(dataset, batch_per_process: int, num_workers: int, seed: int):
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
                      num_workers=num_workers, drop_last=True, pin_memory=torch.cuda.is_available())


def build_val_loader(dataset, batch_per_process: int, num_workers: int):
    """Loader of this process's shard of ``dataset`` in order, each image in exactly one shard."""
    _check_not_empty(dataset, "validation")
    return DataLoader(dataset, batch_size=batch_per_process, sampler=InferenceSampler(len(dataset)),
                      num_workers=num_workers, drop_last=False,
                      pin_memory=torch.cuda.is_available())
