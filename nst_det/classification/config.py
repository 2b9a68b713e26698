"""Every config key of the classification stage (``tools/train_cls.py``), with its default.

Yaml files in ``configs/imagenet`` and ``configs/demo`` inherit with ``_BASE_`` and list only what
they change; a key that is not defined here is an error (``KeyError: 'Non-existent config key: ...'``).
A relative path in :data:`PATH_KEYS` is read next to the yaml that sets it (nst_det.engine.config_paths);
the distillation keys (``DISTILL``) are those of both stages (nst_det.engine.distill_config), plus
the teacher's network name, AT and FitNet; settings out of range are refused at load time.
"""
import os
from typing import Callable, Optional

from fvcore.common.config import CfgNode as CN

from nst_det.engine.config_paths import check_config_stage, resolve_config_paths, yaml_chain
from nst_det.engine.distill_config import (add_distill_config, check_distill_config,
                                           check_renamed_keys)

__all__ = ["get_cls_config", "load_cls_config", "PATH_KEYS"]

# Keys holding file or folder paths: a relative one is read relative to the yaml that sets it
# (then the current directory, then the repository root), see nst_det.engine.config_paths.
PATH_KEYS = ["MODEL.STUDENT.WEIGHTS", "DISTILL.TEACHER.WEIGHTS", "DATA.ROOT"]
# Values of SOLVER.AMP_PRECISION ("" = the device's default, nst_det.engine.precision.amp_dtype).
AMP_PRECISIONS = ("", "bf16", "fp16")


def get_cls_config() -> CN:
    """A fresh config with every classification key at its default."""
    _C = CN()

    _C.MODEL = CN()
    # Device of the student and the teacher: "cuda" (under DDP each process takes its local
    # rank's GPU) or "cpu". Asking for CUDA on a machine without one is an error, never a fallback.
    _C.MODEL.DEVICE = "cuda"
    # Number of classes of the student and the teacher (1000 for ImageNet, 10 for the digits demo).
    _C.MODEL.NUM_CLASSES = 1000

    _C.MODEL.STUDENT = CN()
    # Student network by name (nst_det.classification.models.build_classifier): "inception_bn",
    # a torchvision ResNet ("resnet18", "resnet50", ...), "demo_student", ...
    _C.MODEL.STUDENT.NAME = "inception_bn"
    # Local file the student starts from ("" = random init). Nothing is ever downloaded.
    _C.MODEL.STUDENT.WEIGHTS = ""
    # The student's 4-D weights stored channels-last (NHWC): its convolutions run in that layout.
    _C.MODEL.STUDENT.CHANNELS_LAST = False

    add_distill_config(_C)
    # Teacher network by name; only built when a distillation weight is > 0 (and, with
    # --eval-only, only for --eval-teacher). Its weights: DISTILL.TEACHER.WEIGHTS (a torchvision
    # .pth or a checkpoint of tools/train_cls.py).
    _C.DISTILL.TEACHER.NAME = "resnet101"

    _C.DISTILL.AT = CN()
    # Weight of the attention-transfer term; 0 turns it off.
    _C.DISTILL.AT.WEIGHT = 0.0
    # Power p of the attention map sum_c |F_c|^p.
    _C.DISTILL.AT.P = 2

    _C.DISTILL.FITNET = CN()
    # Weight of the FitNet hint term (1x1 regressor from student to teacher channels); 0 = off.
    _C.DISTILL.FITNET.WEIGHT = 0.0

    _C.DATA = CN()
    # Data set: "imagenet" (train/ and val/ class folders) or "demo_digits" (scikit-learn's bundled
    # handwritten digits, 1797 real 8x8 images, no download).
    _C.DATA.NAME = "imagenet"
    # Root of the data set ("" = $NST_DATASETS/imagenet, or ./datasets/imagenet when unset).
    _C.DATA.ROOT = ""
    # Side of the demo digits after bilinear upsampling from 8x8 (demo_digits only).
    _C.DATA.IMAGE_SIZE = 32
    # Side of the square ImageNet crop: RandomResizedCrop in training, CenterCrop in validation.
    _C.DATA.CROP_SIZE = 224
    # Shorter side that ImageNet validation images are resized to before the center crop.
    _C.DATA.RESIZE_SIZE = 256
    # ImageNet training: ColorJitter(brightness=v, contrast=v, saturation=v) of the crop (0 = off).
    _C.DATA.COLOR_JITTER = 0.0
    # ImageNet training: std of AlexNet's PCA lighting noise on the [0, 1] image (0 = off).
    _C.DATA.LIGHTING_STD = 0.0
    # Data-loading worker processes per process (0 = load in the training process).
    _C.DATA.NUM_WORKERS = 4

    _C.SOLVER = CN()
    # Total batch size over all processes (the official ImageNet runs: 64 per GPU x 8 = 512).
    # Each process gets BATCH_SIZE / world size; it must divide evenly.
    _C.SOLVER.BATCH_SIZE = 512
    # Learning rate for SOLVER.BATCH_SIZE. Linear scaling rule: change the batch by a factor k,
    # change BASE_LR by k.
    _C.SOLVER.BASE_LR = 0.1
    # SGD momentum.
    _C.SOLVER.MOMENTUM = 0.9
    # Nesterov momentum (the official code uses MXNet's "nag").
    _C.SOLVER.NESTEROV = True
    # L2 weight decay on every trainable parameter.
    _C.SOLVER.WEIGHT_DECAY = 1e-4
    # Number of training epochs.
    _C.SOLVER.EPOCHS = 100
    # Epochs after which the learning rate is multiplied by GAMMA (MultiStepLR stepped per epoch).
    _C.SOLVER.STEPS = (30, 60, 90)
    # Learning-rate decay factor at each of SOLVER.STEPS.
    _C.SOLVER.GAMMA = 0.1
    # Mixed precision of the student on any device: training and evaluation under torch.autocast
    # in SOLVER.AMP_PRECISION, with a GradScaler for float16 only.
    _C.SOLVER.AMP = False
    # "" = float16 on CUDA, bfloat16 on the CPU; "bf16" / "fp16" (CUDA only). Read when SOLVER.AMP.
    _C.SOLVER.AMP_PRECISION = ""
    # Write a checkpoint every this many epochs (and always after the last epoch).
    _C.SOLVER.CHECKPOINT_PERIOD = 1

    # Folder of checkpoints, metrics.json, TensorBoard events and the config used.
    _C.OUTPUT_DIR = "./output/cls"
    # Random seed of python, numpy and torch (each process adds its rank); < 0 = draw one.
    _C.SEED = 0
    # Write losses, lr, images/s and ETA every this many iterations.
    _C.LOG_PERIOD = 20
    return _C


def load_cls_config(config_file: str = "", opts=None, *,
                    detection_defaults: Optional[Callable[[], object]] = None) -> CN:
    """Defaults, then ``config_file`` (with its ``_BASE_`` chain), then ``opts`` [KEY, VALUE, ...];
    relative paths of :data:`PATH_KEYS` made absolute (see nst_det.engine.config_paths), checked with
    :func:`~nst_det.engine.distill_config.check_distill_config`, frozen. An unknown key in either is
    a ``KeyError`` naming it; a key of an earlier version a ``KeyError`` naming its new name.
    MODEL.DEVICE is not checked here (see nst_det.engine.device.check_device): a config for a GPU loads
    on any machine.

    Before the merge, every yaml of the chain is read and checked (a ConfigFileError naming the
    file for an empty one, a yaml syntax error with its line, a key given twice in one mapping, a
    ``_BASE_`` that is missing or loops; with ``detection_defaults`` (a function giving the
    detection stage's default config: the tools pass it, the library's two stages import nothing
    of each other), a detection config, naming tools/train_net.py). After it, SOLVER.EPOCHS < 1
    and an unknown SOLVER.AMP_PRECISION are ValueErrors naming the key."""
    cfg = get_cls_config()
    if config_file and not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file '{config_file}' does not exist")
    if config_file and detection_defaults is not None:
        check_config_stage(yaml_chain(config_file), "classification", cfg, "detection",
                           detection_defaults)
    check_renamed_keys(config_file, opts)
    if config_file:
        cfg.merge_from_file(config_file)
    if opts:
        if len(opts) % 2:
            raise ValueError(f"config overrides must be KEY VALUE pairs, got {len(opts)} items: "
                             f"{opts}")
        try:
            cfg.merge_from_list(list(opts))
        except AssertionError as e:  # yacs asserts on an unknown key given on the command line
            raise KeyError(f"{e} (config keys: nst_det/classification/config.py)") from e
    epochs = cfg.SOLVER.EPOCHS
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"SOLVER.EPOCHS is {epochs!r}: the number of training epochs must be an "
                         f"integer >= 1")
    if cfg.SOLVER.AMP_PRECISION not in AMP_PRECISIONS:  # the device's support: ClsTrainer
        raise ValueError(f"SOLVER.AMP_PRECISION is {cfg.SOLVER.AMP_PRECISION!r}: it must be one of "
                         f"{list(AMP_PRECISIONS)} ('' = float16 on CUDA, bfloat16 on the CPU)")
    resolve_config_paths(cfg, config_file, opts, PATH_KEYS)
    check_distill_config(cfg)
    cfg.freeze()
    return cfg

