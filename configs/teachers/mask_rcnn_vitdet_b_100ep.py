# Teacher (LazyConfig, DISTILL.TEACHER.CONFIG): ViTDet Mask R-CNN with a plain ViT-B backbone and
# its simple feature pyramid (p2-p6, 256 channels), as Detectron2's
# projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py builds it: the model of the model
# zoo's common/models/mask_rcnn_vitdet.py (ViT-B/16 with windowed and global attention, LayerNorm
# everywhere, RGB input with ImageNet mean/std, padded to a 1024 x 1024 square). Only `model` is
# kept: nst_det never trains a teacher (train it with Detectron2's own tools and that project's
# config). Needs Detectron2's main branch (detectron2.modeling.backbone.vit) and timm.
# Weights: the COCO model of "ViT-B, Mask R-CNN, 100 ep" from projects/ViTDet's README, saved as
# pretrained/mask_rcnn_vitdet_b_100ep.pkl (a student yaml names that path).
from detectron2 import model_zoo
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid, ViT  # noqa: F401  (main only)

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
