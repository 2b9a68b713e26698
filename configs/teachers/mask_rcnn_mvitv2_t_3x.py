# Teacher (LazyConfig, DISTILL.TEACHER.CONFIG): Mask R-CNN with an MViTv2-T backbone and an FPN
# (p2-p6, 256 channels), as Detectron2's projects/MViTv2/configs/mask_rcnn_mvitv2_t_3x.py builds
# it: the model zoo's common/models/mask_rcnn_fpn.py with MViTv2-T (embed_dim 96, depth 10, stage
# ends at blocks 0, 2, 7, 9, residual pooling, LayerNorm) as its bottom-up network, RGB input with
# ImageNet mean/std, padded to multiples of 32. Only `model` is kept: nst_det never trains a
# teacher. Needs Detectron2's main branch (detectron2.modeling.backbone.mvit) and timm.
# Weights: the COCO model of "MViTv2-T, Mask R-CNN" from projects/MViTv2's README, saved as
# pretrained/mask_rcnn_mvitv2_t_3x.pkl (a student yaml names that path).
from functools import partial

import torch.nn as nn
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.mvit import MViT  # main only

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
constants = model_zoo.get_config("common/data/constants.py").constants
model.pixel_mean = constants.imagenet_rgb256_mean
model.pixel_std = constants.imagenet_rgb256_std
model.input_format = "RGB"
model.backbone.bottom_up = L(MViT)(
    embed_dim=96,
    depth=10,
    num_heads=1,
    last_block_indexes=(0, 2, 7, 9),
    residual_pooling=True,
    drop_path_rate=0.2,
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
    out_features=("scale2", "scale3", "scale4", "scale5"),
)
model.backbone.in_features = "${.bottom_up.out_features}"
