# Faster R-CNN R-50 FPN (Detectron2's LazyConfig Mask R-CNN FPN without its mask head, from
# Detectron2's ImageNet R-50) on PASCAL VOC (VOC2007 + VOC2012 trainval, VOC2007 test, the VOC2007
# 11-point AP and AP50 per class), distilled with NST on p2-p6 from the R-101 FPN teacher of the
# yaml configs. VOC schedule of Base-VOC.yaml: 18k iterations, batch 16, lr 0.02, x0.1 at 12k
# and 16k, shorter side 480-800 in training, 800 in test.
# First: https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl into
# pretrained/ (and R-101.pkl for the teacher), VOC under $DETECTRON2_DATASETS, then train the
# teacher:
#   python tools/train_net.py --config-file configs/voc_frcnn_R101_teacher.yaml --num-gpus 8
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/voc_frcnn_R50_nst.py --num-gpus 8
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/voc_frcnn_R50_nst.py --eval-only \
#       train.init_checkpoint=output/lazy/voc_frcnn_R50_nst/model_final.pth
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

from nst_det.detection.evaluation.evaluators import VOCDetectionEvaluator
from nst_det.detection.lazy import build_teacher_from_files, distill_model

# The student: Faster R-CNN R-50 FPN, 20 classes, stem and res2 frozen (as the yaml configs).
_student = get_config("common/models/mask_rcnn_fpn.py").model
_student.roi_heads.num_classes = 20
_student.roi_heads.mask_in_features = None
_student.roi_heads.mask_pooler = None
_student.roi_heads.mask_head = None
_student.backbone.bottom_up.freeze_at = 2

model = distill_model(_student, teacher=L(build_teacher_from_files)(
    config="configs/voc_frcnn_R101_teacher.yaml",
    weights="output/voc_frcnn_R101_teacher/model_final.pth",
))
# The yaml configs' DISTILL keys (table in docs/DISTILLATION.md); override as distill.NST.WEIGHT=8.
distill = dict(
    STUDENT_FEATURES=["p2", "p3", "p4", "p5", "p6"],
    TEACHER_FEATURES=["p2", "p3", "p4", "p5", "p6"],
    NST=dict(WEIGHT=4.0, KERNEL="poly"),  # as configs/voc_frcnn_nst.yaml; not tuned on VOC
)

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names=["voc_2007_trainval", "voc_2012_trainval"]),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=[480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800],
                sample_style="choice",
                max_size=1333,
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
    ),
    total_batch_size=16,
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="voc_2007_test", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)
dataloader.evaluator = L(VOCDetectionEvaluator)(dataset_name="${..test.dataset.names}")

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.02

train = get_config("common/train.py").train
train.init_checkpoint = "pretrained/R-50.pkl"
train.max_iter = 18000
train.checkpointer.period = 5000
train.eval_period = 0  # evaluate at the end
train.output_dir = "output/lazy/voc_frcnn_R50_nst"

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[12000, 16000],
        num_updates=18000,  # fractions of train.max_iter: scale with it
    ),
    warmup_length=100 / 18000,
    warmup_factor=0.001,
)
