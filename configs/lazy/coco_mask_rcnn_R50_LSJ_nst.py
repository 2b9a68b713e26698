# Mask R-CNN R-50 FPN, 100 epochs of large-scale jitter from scratch (Detectron2's
# new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py, unchanged: data, SyncBN, 4conv1fc box head,
# schedule, AMP), distilled with NST on p2-p6 from the frozen LSJ Mask R-CNN R-101 FPN of the same
# table (new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py; its SyncBN layers become
# FrozenBatchNorm2d in the teacher, as the log says).
# First: download the model of "R101-FPN, 100 ep" from the "New baselines" table of Detectron2's
# MODEL_ZOO.md into pretrained/mask_rcnn_R_101_FPN_100ep_LSJ.pkl (or set model.teacher.weights=...);
# COCO 2017 under $DETECTRON2_DATASETS (datasets/README.md). Then:
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/coco_mask_rcnn_R50_LSJ_nst.py --num-gpus 8
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/coco_mask_rcnn_R50_LSJ_nst.py --eval-only \
#       train.init_checkpoint=output/lazy/coco_mask_rcnn_R50_LSJ_nst/model_final.pth
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from nst_det.detection.lazy import build_teacher_from_files, distill_model

_student = get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
dataloader = _student.dataloader
optimizer = _student.optimizer
lr_multiplier = _student.lr_multiplier
train = _student.train

model = distill_model(_student.model, teacher=L(build_teacher_from_files)(
    config="zoo://new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py",
    weights="pretrained/mask_rcnn_R_101_FPN_100ep_LSJ.pkl",
))
# The yaml configs' DISTILL keys (table in docs/DISTILLATION.md); override as distill.NST.WEIGHT=8.
distill = dict(
    STUDENT_FEATURES=["p2", "p3", "p4", "p5", "p6"],
    TEACHER_FEATURES=["p2", "p3", "p4", "p5", "p6"],
    NST=dict(WEIGHT=4.0, KERNEL="poly"),  # the demo's choice (docs/RESULTS.md); not tuned on COCO
)
train.output_dir = "output/lazy/coco_mask_rcnn_R50_LSJ_nst"
