"""Every config key of the classification stage (``tools/train_cls.py``), with its default.

Yaml files in ``configs/imagenet`` and ``configs/demo`` inherit with ``_BASE_`` and list only what
they change; a key that is not defined here is an error (``KeyError: 'Non-existent config key: ...'``).
A relative path in :data:`PATH_KEYS` is read next to the yaml that sets it (nst_det.engine.config_paths);
distillation settings out of range are refused at load time (:func:`check_cls_config`).
"""
import math
import os

from fvcore.common.config import CfgNode as CN

from nst_det.engine.config_paths import resolve_config_paths

__all__ = ["get_cls_config", "load_cls_config", "check_cls_config", "PATH_KEYS"]

# Keys holding file or folder paths: a relative one is read relative to the yaml that sets it
# (then the current directory, then the repository root), see nst_det.engine.config_paths.
PATH_KEYS = ["MODEL.STUDENT.WEIGHTS", "MODEL.TEACHER.WEIGHTS", "DATA.ROOT"]
# Distillation weights: 0 turns a term off, a negative or non-finite one is an error.
_WEIGHT_KEYS = ("NST", "KD", "AT", "FITNET")


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
    # Student layers whose feature maps are transferred ([] = the network's default tap, the last
    # feature map before global pooling). Matched in order with MODEL.TEACHER.TAP.
    _C.MODEL.STUDENT.TAP = []

    _C.MODEL.TEACHER = CN()
    # Teacher network by name; only built when a distillation weight is > 0 (and, with
    # --eval-only, only for --eval-teacher).
    _C.MODEL.TEACHER.NAME = "resnet101"
    # Local file of the trained teacher (a torchvision .pth or a checkpoint of tools/train_cls.py).
    # Required whenever a distillation term is on: a random teacher teaches nothing.
    _C.MODEL.TEACHER.WEIGHTS = ""
    # Teacher layers matched with MODEL.STUDENT.TAP ([] = the network's default tap).
    _C.MODEL.TEACHER.TAP = []

    _C.DISTILL = CN()
    # Linear warm-up of every distillation weight from 0 to its value over this many iterations
    # (0 = off). Helps when a distillation term is orders of magnitude above the task loss early on.
    _C.DISTILL.WARMUP_ITERS = 0

    _C.DISTILL.NST = CN()
    # Weight of the NST (MMD) term; 0 turns it off. Official code: 50 for the polynomial kernel.
    _C.DISTILL.NST.WEIGHT = 0.0
    # MMD kernel: "linear", "poly" or "gaussian".
    _C.DISTILL.NST.KERNEL = "poly"
    # Degree d of the polynomial kernel (x^T y + c)^d (paper: 2).
    _C.DISTILL.NST.DEGREE = 2
    # Constant c of the polynomial kernel (paper: 0).
    _C.DISTILL.NST.COEF = 0.0
    # Bandwidth sigma^2 of the Gaussian kernel; 0 = the rule of nst_det.losses (data-driven).
    _C.DISTILL.NST.SIGMA2 = 0.0

    _C.DISTILL.KD = CN()
    # Weight of the KD term (T^2 * KL of the softened outputs); 0 turns it off. The official code's
    # grad_scale 16 at T=4 is T^2, which kd_loss already includes: it corresponds to weight 1 here.
    _C.DISTILL.KD.WEIGHT = 0.0
    # Softmax temperature of KD (official code: 4).
    _C.DISTILL.KD.TEMPERATURE = 4.0

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
    # Mixed precision (torch.amp autocast + GradScaler); used on CUDA only, ignored on the CPU.
    _C.SOLVER.AMP = False
    # Write a checkpoint every this many epochs (and always after the last epoch).
    _C.SOLVER.CHECKPOINT_PERIOD = 1

    # Folder of checkpoints, metrics.json, TensorBoard events and the config used.
    _C.OUTPUT_DIR = "./output/cls"
    # Random seed of python, numpy and torch (each process adds its rank); < 0 = draw one.
    _C.SEED = 0
    # Write losses, lr, images/s and ETA every this many iterations.
    _C.LOG_PERIOD = 20
    return _C


def _number(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise ValueError(f"{key} is {node!r}: it must be a number")
    return node


def check_cls_config(cfg) -> None:
    """ValueError naming the key and its value for a distillation setting that makes no sense: a
    negative or non-finite DISTILL.*.WEIGHT (0 turns a term off), a negative or non-finite
    DISTILL.NST.SIGMA2 (0 = the data-driven rule), a DISTILL.KD.TEMPERATURE that is not > 0 or a
    negative DISTILL.WARMUP_ITERS."""
    for term in _WEIGHT_KEYS:
        key = f"DISTILL.{term}.WEIGHT"
        value = _number(cfg, key)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{key} is {value}: a distillation weight must be a finite number "
                             f">= 0 (0 turns the term off)")
    sigma2 = _number(cfg, "DISTILL.NST.SIGMA2")
    if not math.isfinite(sigma2) or sigma2 < 0:
        raise ValueError(f"DISTILL.NST.SIGMA2 is {sigma2}: the Gaussian bandwidth must be a finite "
                         f"number > 0, or 0 for the data-driven rule")
    temperature = _number(cfg, "DISTILL.KD.TEMPERATURE")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"DISTILL.KD.TEMPERATURE is {temperature}: the KD temperature must be a "
                         f"finite number > 0")
    warmup = _number(cfg, "DISTILL.WARMUP_ITERS")
    if warmup < 0:
        raise ValueError(f"DISTILL.WARMUP_ITERS is {warmup}: it must be >= 0 (0 = no warm-up)")


def load_cls_config(config_file: str = "", opts=None) -> CN:
    """Defaults, then ``config_file`` (with its ``_BASE_`` chain), then ``opts`` [KEY, VALUE, ...];
    relative paths of :data:`PATH_KEYS` made absolute (see nst_det.engine.config_paths), checked with
    :func:`check_cls_config`, frozen. An unknown key in either is a ``KeyError`` naming it.
    MODEL.DEVICE is not checked here (see nst_det.engine.device.check_device): a config for a GPU loads
    on any machine."""
    cfg = get_cls_config()
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file '{config_file}' does not exist")
        cfg.merge_from_file(config_file)
    if opts:
        if len(opts) % 2:
            raise ValueError(f"config overrides must be KEY VALUE pairs, got {len(opts)} items: "
                             f"{opts}")
        try:
            cfg.merge_from_list(list(opts))
        except AssertionError as e:  # yacs asserts on an unknown key given on the command line
            raise KeyError(f"{e} (config keys: nst_det/classification/config.py)") from e
    resolve_config_paths(cfg, config_file, opts, PATH_KEYS)
    check_cls_config(cfg)
    cfg.freeze()
    return cfg
