"""Tests of nst_det/classification/data.py: ImageNet folders, the digits demo set, the loaders."""
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import nst_det.classification  # noqa: F401  (first: makes Detectron2 usable here)
from nst_det.classification.config import get_cls_config
from nst_det.classification.data import (
    DIGITS_NUM_TRAIN,
    DigitsDataset,
    Lighting,
    UnreadableImageError,
    build_cls_dataset,
    build_train_loader,
    build_val_loader,
    imagenet_root,
)


def _imagenet(tmp_path, classes=("cat", "dog"), per_class=2, splits=("train", "val"),
              val_classes=None, ext="png"):
    rng = np.random.RandomState(0)
    for split in splits:
        for c in (val_classes or classes) if split == "val" else classes:
            folder = tmp_path / "imagenet" / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.randint(0, 255, (16, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{ext}")
    return str(tmp_path / "imagenet")


def _cut_in_half(path):
    """Truncate the file at ``path`` to half its size: a JPEG cut off mid-scan."""
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


def _cfg(root, num_classes=2):
    cfg = get_cls_config()
    cfg.DATA.ROOT = root
    cfg.MODEL.NUM_CLASSES = num_classes
    return cfg


def test_imagenet_folders_give_224_crops(tmp_path):
    cfg = _cfg(_imagenet(tmp_path))
    train, val = build_cls_dataset(cfg, train=True), build_cls_dataset(cfg, train=False)
    assert len(train) == 4 and train.classes == ["cat", "dog"]
    assert train[0][0].shape == (3, 224, 224) and val[3][0].shape == (3, 224, 224)
    assert val[3][1] == 1
    assert torch.equal(val[0][0], val[0][0])  # validation is deterministic


def test_crop_and_resize_sizes_come_from_the_config(tmp_path):
    cfg = _cfg(_imagenet(tmp_path))
    cfg.DATA.CROP_SIZE, cfg.DATA.RESIZE_SIZE = 8, 12
    assert build_cls_dataset(cfg, train=True)[0][0].shape == (3, 8, 8)
    assert build_cls_dataset(cfg, train=False)[0][0].shape == (3, 8, 8)


# fb.resnet.torch's datasets/imagenet.lua, written out again: column j of EIGVEC is eigenvector j.
EIGVAL = [0.2175, 0.0188, 0.0045]
EIGVEC = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]


def test_lighting_adds_eigvec_times_alpha_times_eigval_to_every_pixel():
    image = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(1))
    out = Lighting(0.1, generator=torch.Generator().manual_seed(2))(image)
    alpha = (torch.randn(3, generator=torch.Generator().manual_seed(2)).double() * 0.1).tolist()
    expected = image.double().clone()
    for c in range(3):  # naive float64: rgb[c] = sum_j eigvec[c][j] * alpha[j] * eigval[j]
        expected[c] += sum(EIGVEC[c][j] * alpha[j] * EIGVAL[j] for j in range(3))
    assert out.dtype == torch.float32 and out.shape == image.shape
    assert (out - image).abs().min() > 1e-4  # every pixel moved: the check below is not vacuous
    assert torch.allclose(out.double(), expected, rtol=0, atol=1e-6)


def test_lighting_with_std_0_is_the_identity_and_a_negative_std_is_refused():
    image = torch.rand(3, 4, 4)
    assert torch.equal(Lighting(0.0)(image), image)
    with pytest.raises(ValueError, match=r"Lighting std is -0.1: it must be >= 0"):
        Lighting(-0.1)


def test_augmentation_keys_add_jitter_and_lighting_to_training_only(tmp_path):
    cfg = _cfg(_imagenet(tmp_path))
    cfg.DATA.COLOR_JITTER, cfg.DATA.LIGHTING_STD = 0.4, 0.1
    train, val = build_cls_dataset(cfg, train=True), build_cls_dataset(cfg, train=False)
    steps = [type(t) for t in train.transform.transforms]
    assert steps == [transforms.RandomResizedCrop, transforms.ColorJitter,
                     transforms.RandomHorizontalFlip, transforms.ToTensor, Lighting,
                     transforms.Normalize]  # lighting on the [0, 1] tensor, before Normalize
    jitter, lighting = train.transform.transforms[1], train.transform.transforms[4]
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.6, 1.4)
    assert jitter.hue is None and lighting.std == 0.1
    assert [type(t) for t in val.transform.transforms] == [
        transforms.Resize, transforms.CenterCrop, transforms.ToTensor, transforms.Normalize]
    assert train[0][0].shape == (3, 224, 224)
    # Off by default: the training transform is the plain one.
    plain = build_cls_dataset(_cfg(cfg.DATA.ROOT), train=True).transform.transforms
    assert [type(t) for t in plain] == [transforms.RandomResizedCrop,
                                        transforms.RandomHorizontalFlip, transforms.ToTensor,
                                        transforms.Normalize]


@pytest.mark.parametrize("key", ["COLOR_JITTER", "LIGHTING_STD"])
@pytest.mark.parametrize("value", [-0.1, float("nan")])
def test_negative_or_nan_augmentation_names_the_key(tmp_path, key, value):
    cfg = _cfg(_imagenet(tmp_path, per_class=1))
    cfg.DATA[key] = value
    with pytest.raises(ValueError, match=rf"DATA.{key} is {value!r}: it must be a finite number "
                                         rf">= 0 \(0 = off\)"):
        build_cls_dataset(cfg, train=True)


def test_train_and_val_with_other_class_folders_are_refused(tmp_path):
    root = _imagenet(tmp_path, classes=("cat", "dog", "owl"), val_classes=("cat", "dog", "emu"),
                     per_class=1)
    for train in (True, False):  # whichever split is built first
        with pytest.raises(ValueError, match=r"differ between '.*imagenet/train' \(3 folders\) and "
                                             r"'.*imagenet/val' \(3 folders\): only in train/: "
                                             r"\[owl\]; only in val/: \[emu\]"):
            build_cls_dataset(_cfg(root, 3), train=train)
    (tmp_path / "imagenet" / "val" / "emu").rename(tmp_path / "imagenet" / "val" / "owl")
    (tmp_path / "imagenet" / "val" / "cat").rename(tmp_path / "imagenet" / "val" / "ant")
    with pytest.raises(ValueError, match=r"only in train/: \[cat\]; only in val/: \[ant\]"):
        build_cls_dataset(_cfg(root, 3), train=False)
    shutil.rmtree(tmp_path / "imagenet" / "val" / "ant")
    with pytest.raises(ValueError, match=r"\(2 folders\): only in train/: \[cat\]\. A label"):
        build_cls_dataset(_cfg(root, 2), train=False)
    shutil.rmtree(tmp_path / "imagenet" / "val")
    (tmp_path / "imagenet" / "val").mkdir()  # a val/ without class folders
    with pytest.raises(ValueError, match=r"'.*imagenet/val' \(0 folders\): only in train/: "
                                         r"\[cat, dog, owl\]\. A label"):
        build_cls_dataset(_cfg(root, 3), train=True)


def test_num_classes_other_than_the_class_folders_is_refused(tmp_path):
    root = _imagenet(tmp_path, per_class=1)
    with pytest.raises(ValueError, match=r"MODEL.NUM_CLASSES is 1000 but '.*imagenet/train' has 2 "
                                         r"class folders: set MODEL.NUM_CLASSES 2"):
        build_cls_dataset(_cfg(root, 1000), train=True)
    cfg = get_cls_config()
    cfg.DATA.NAME = "demo_digits"
    with pytest.raises(ValueError, match="MODEL.NUM_CLASSES is 1000 but the demo_digits data set "
                                         "has 10 classes"):
        build_cls_dataset(cfg, train=False)


def test_truncated_training_jpeg_is_skipped_naming_it(tmp_path, caplog):
    root = _imagenet(tmp_path, per_class=2, ext="JPEG")
    bad = tmp_path / "imagenet" / "train" / "cat" / "1.JPEG"
    _cut_in_half(bad)
    train = build_cls_dataset(_cfg(root), train=True)
    assert train.samples[1][0] == str(bad)
    with caplog.at_level(logging.WARNING, logger="nst_det"):
        torch.manual_seed(0)
        image, label = train[1]
        torch.manual_seed(0)
        expected = train[2]  # the next index, with the same random crop
    assert torch.equal(image, expected[0]) and label == expected[1] == 1
    assert f"training image '{bad}' is truncated or unreadable" in caplog.text
    assert "skipped, the next image is used in its place" in caplog.text
    # Every image unreadable: an error naming the folder, not an endless search.
    for path, _ in train.samples:
        _cut_in_half(path)
    with pytest.raises(UnreadableImageError, match=r"in a row .*looks damaged"):
        train[0]


def test_truncated_validation_jpeg_is_an_error_naming_it(tmp_path):
    root = _imagenet(tmp_path, per_class=2, ext="JPEG")
    bad = tmp_path / "imagenet" / "val" / "dog" / "0.JPEG"
    _cut_in_half(bad)
    val = build_cls_dataset(_cfg(root), train=False)
    assert val[0][0].shape == (3, 224, 224)
    with pytest.raises(UnreadableImageError, match=f"validation image '{bad}' is truncated or "
                                                   f"unreadable"):
        val[2]


def test_root_defaults_to_nst_datasets(monkeypatch):
    monkeypatch.setenv("NST_DATASETS", "/data/sets")
    assert imagenet_root("") == "/data/sets/imagenet"
    assert imagenet_root("/x") == "/x"


def test_missing_root_names_path_and_readme(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageNet root '.*nowhere' \(DATA.ROOT\) does not "
                                                r"exist; tried: .*datasets/README.md"):
        build_cls_dataset(_cfg(str(tmp_path / "nowhere")), train=True)


def test_missing_val_folder_names_it(tmp_path):
    root = _imagenet(tmp_path, splits=("train",))
    with pytest.raises(FileNotFoundError, match=r"imagenet/val'.*datasets/README.md"):
        build_cls_dataset(_cfg(root), train=False)


def test_empty_split_names_it(tmp_path):
    root = _imagenet(tmp_path, splits=("val",))
    (tmp_path / "imagenet" / "train" / "cat").mkdir(parents=True)  # a class folder, no image
    with pytest.raises(ValueError, match=r"imagenet/train' is empty"):
        build_cls_dataset(_cfg(root), train=True)


def test_unknown_data_set_name():
    cfg = get_cls_config()
    cfg.DATA.NAME = "cifar"
    with pytest.raises(KeyError, match="DATA.NAME 'cifar'"):
        build_cls_dataset(cfg, train=True)


def test_digits_split_is_fixed_disjoint_and_real():
    from sklearn.datasets import load_digits

    train, val = DigitsDataset(train=True), DigitsDataset(train=False)
    assert (len(train), len(val)) == (DIGITS_NUM_TRAIN, 1797 - DIGITS_NUM_TRAIN)
    assert train[0][0].shape == (3, 32, 32) and set(val.labels.tolist()) == set(range(10))
    # The images are sklearn's scans (upsampled, normalised) and the two splits share none.
    assert sorted(train.index.tolist() + val.index.tolist()) == list(range(1797))
    scans = torch.from_numpy(load_digits().images[val.index]).float().div(16)[:, None]
    expected = torch.nn.functional.interpolate(scans, size=(32, 32), mode="bilinear") * 2 - 1
    assert torch.allclose(val.images[:, :1], expected, atol=1e-6)
    assert torch.equal(val.labels, torch.from_numpy(load_digits().target[val.index]))
    assert torch.equal(DigitsDataset(train=False).images, val.images)  # deterministic split


def test_digits_training_images_shift_validation_ones_do_not():
    train, val = DigitsDataset(train=True), DigitsDataset(train=False)
    torch.manual_seed(0)
    draws = [train[5][0] for _ in range(6)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert torch.equal(val[5][0], val[5][0])


def test_train_loader_order_depends_only_on_seed_and_epoch():
    data = torch.utils.data.TensorDataset(torch.arange(20).float()[:, None], torch.arange(20))

    def order(epoch, seed=3):
        loader = build_train_loader(data, 4, 0, seed=seed)
        loader.sampler.set_epoch(epoch)
        return torch.cat([y for _, y in loader]).tolist()

    torch.manual_seed(123)
    first = order(1)
    torch.manual_seed(456)
    assert order(1) == first and order(2) != first
    assert len(first) == 20 and sorted(first) == list(range(20))


def test_val_loader_sees_every_image_once():
    data = torch.utils.data.TensorDataset(torch.zeros(7, 1), torch.arange(7))
    assert torch.cat([y for _, y in build_val_loader(data, 3, 0)]).tolist() == list(range(7))


def test_memory_is_pinned_only_when_asked():  # the trainer asks for a CUDA MODEL.DEVICE only
    data = torch.utils.data.TensorDataset(torch.zeros(8, 1), torch.arange(8))
    assert not build_train_loader(data, 4, 0, seed=0).pin_memory
    assert not build_val_loader(data, 4, 0).pin_memory
    assert build_val_loader(data, 4, 0, pin_memory=True).pin_memory


def test_empty_and_too_small_sets_are_errors():
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 1), torch.zeros(0))
    with pytest.raises(ValueError, match="empty"):
        build_train_loader(empty, 4, 0, seed=0)
    tiny = torch.utils.data.TensorDataset(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(ValueError, match="fewer than its batch of 4"):
        build_train_loader(tiny, 4, 0, seed=0)
