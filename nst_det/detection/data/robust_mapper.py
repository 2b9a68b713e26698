"""RobustDatasetMapper: Detectron2's DatasetMapper that, in training, skips an image it cannot use
(an unreadable file, no box left after resizing or cropping) with a warning naming the file.

Returning ``None`` makes Detectron2's ``MapDataset`` draw another image (on Python >= 3.11 through
the fix in ``nst_det._d2_compat``). In inference nothing is skipped: evaluation must see every
image, so an unreadable one is an error naming the file.
"""
import logging
from typing import Optional

import numpy as np
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.structures import BoxMode

__all__ = ["RobustDatasetMapper"]

logger = logging.getLogger(__name__)


def _box_inside(annotation: dict, width: int, height: int) -> bool:
    """Whether the annotation's box covers any area of the ``width`` x ``height`` image."""
    x0, y0, x1, y1 = BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"],
                                     BoxMode.XYXY_ABS)
    return min(x1, width) > max(x0, 0) and min(y1, height) > max(y0, 0)


class RobustDatasetMapper(DatasetMapper):
    """DatasetMapper that returns None (with a warning naming the file) for an unusable training
    image, and raises an error naming the file for an unreadable test image."""

    @configurable
    def __init__(self, is_train: bool, *, dataset_size: int = 0, **kwargs):
        """
        Args:
            is_train, kwargs: the arguments of DatasetMapper.
            dataset_size: images in the data set; when that many images in a row are unusable,
                training stops with an error instead of drawing forever (0 = no limit).
        """
        super().__init__(is_train, **kwargs)
        self.dataset_size = int(dataset_size)
        self._skipped_in_a_row = 0
        self._warned_boxes = set()

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_size: int = 0):
        ret = super().from_config(cfg, is_train)
        ret["dataset_size"] = dataset_size
        return ret

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        """The mapped dict (image [3, H, W] uint8, instances), or None for an unusable training image."""
        file_name = dataset_dict.get("file_name", "<no file_name>")
        if self.is_train:
            self._warn_boxes_outside(dataset_dict, file_name)
        try:
            mapped = super().__call__(dataset_dict)
        except (OSError, ValueError) as e:  # unreadable/truncated file; SizeMismatchError
            if not self.is_train:
                raise OSError(f"cannot use image '{file_name}': {type(e).__name__}: {e}") from e
            return self._skip(file_name, f"{type(e).__name__}: {e}")
        if self.is_train and dataset_dict.get("annotations") and "instances" in mapped \
                and len(mapped["instances"]) == 0:
            return self._skip(file_name, f"no box left after resizing/cropping "
                                         f"({len(dataset_dict['annotations'])} in its annotation)")
        self._skipped_in_a_row = 0
        return mapped

    def _skip(self, file_name: str, reason: str) -> None:
        self._skipped_in_a_row += 1
        if self.dataset_size and self._skipped_in_a_row >= self.dataset_size:
            raise ValueError(
                f"{self._skipped_in_a_row} training images in a row could not be used (the data "
                f"set has {self.dataset_size}); the last one, '{file_name}': {reason}")
        logger.warning(f"skipping training image '{file_name}': {reason}")
        return None

    def _warn_boxes_outside(self, dataset_dict: dict, file_name: str) -> None:
        """Warn once per file about boxes with no area inside the image (Detectron2 drops them)."""
        if file_name in self._warned_boxes or "width" not in dataset_dict:
            return
        width, height = dataset_dict["width"], dataset_dict["height"]
        outside = [np.round(a["bbox"], 1).tolist() for a in dataset_dict.get("annotations", [])
                   if not _box_inside(a, width, height)]
        if outside:
            self._warned_boxes.add(file_name)
            logger.warning(f"image '{file_name}' ({width} x {height}): {len(outside)} box(es) "
                           f"outside the image, dropped: {outside}")
