"""Transformer teachers (ViTDet's ViT + simple feature pyramid, MViTv2 + FPN; Detectron2's main
branch) distilled into a yaml CNN-FPN student (configs/demo): each model keeps its own input
pipeline (the teacher's input is what its own preprocess_image makes of the same images), levels
are matched by stride and the maps of the two differently padded batches are cropped to the
images before NST. On Detectron2 v0.6 such a teacher is an error naming what it needs."""
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from nst_det.detection.load_config import load_nst_cfg
from nst_det.detection.meta_arch import crop_to_images, same_input_pipeline
from nst_det.detection.teacher import build_teacher_model, has_transformer_backbones
from nst_det.losses import nst_loss
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
TEACHERS = os.path.join(CONFIGS, "teachers")
STUDENT = os.path.join(CONFIGS, "demo", "det_student_nst.yaml")  # BGR, caffe mean, pads to 32
SHIPPED = {  # teacher kind -> (shipped teacher LazyConfig, shipped student yaml)
    "vitdet": ("mask_rcnn_vitdet_b_100ep.py", "coco_frcnn_R18_from_vitdet_nst.yaml"),
    "mvitv2": ("mask_rcnn_mvitv2_t_3x.py", "coco_frcnn_R18_from_mvitv2_nst.yaml"),
}
SQUARE = 128  # the tiny ViTDet teacher pads to a 128 x 128 square (the shipped one: 1024)

# The shipped teacher LazyConfig, made tiny (same classes of modules, few channels and blocks).
_HEADS = """
model.proposal_generator.head.in_channels = 32
model.roi_heads.box_head.update(input_shape=ShapeSpec(channels=32, height=7, width=7),
                                conv_dims=[16], fc_dims=[32])
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=32)
model.roi_heads.mask_head.update(input_shape=ShapeSpec(channels=32, height=14, width=14),
                                 conv_dims=[16])
model.roi_heads.num_classes = 3
"""
TINY = {
    "vitdet": f"""
model.backbone.net.update(img_size={SQUARE}, embed_dim=32, depth=2, num_heads=2, window_size=4,
                          window_block_indexes=[0], drop_path_rate=0.0)
model.backbone.out_channels = 32
model.backbone.square_pad = {SQUARE}
""" + _HEADS,
    "mvitv2": """
model.backbone.bottom_up.update(embed_dim=16, depth=4, last_block_indexes=(0, 1, 2, 3),
                                drop_path_rate=0.0)
model.backbone.out_channels = 32
""" + _HEADS,
}

needs_main = pytest.mark.skipif(not has_transformer_backbones(),
                                reason="the transformer backbones need Detectron2's main branch")


def write_tiny_teacher(kind: str, folder) -> str:
    """A LazyConfig file in ``folder`` that loads the shipped teacher config of ``kind`` and
    shrinks it."""
    path = os.path.join(str(folder), f"tiny_{kind}.py")
    with open(path, "w") as f:
        f.write("from detectron2.config import LazyConfig\n"
                "from detectron2.layers import ShapeSpec\n\n"
                f"model = LazyConfig.load({os.path.join(TEACHERS, SHIPPED[kind][0])!r}).model\n"
                + textwrap.dedent(TINY[kind]))
    return path


@pytest.fixture(scope="module")
def tiny_teachers(tmp_path_factory):
    """kind -> (tiny teacher config, its random weights .pth), each written once."""
    folder, cache = tmp_path_factory.mktemp("transformer_teachers"), {}

    def get(kind):
        if kind not in cache:
            config = write_tiny_teacher(kind, folder)
            torch.manual_seed(0)
            weights = os.path.join(str(folder), f"tiny_{kind}.pth")
            torch.save({"model": build_teacher_model(config).state_dict()}, weights)
            cache[kind] = (config, weights)
        return cache[kind]
    return get


def build_pair(kind, tiny_teachers, *opts):
    """The demo student distilled from the tiny teacher of ``kind``, levels matched by stride."""
    config, weights = tiny_teachers(kind)
    torch.manual_seed(1)
    cfg = load_nst_cfg(STUDENT, [
        "DISTILL.TEACHER.CONFIG", config, "DISTILL.TEACHER.WEIGHTS", weights,
        "DISTILL.STUDENT_FEATURES", [], "DISTILL.TEACHER_FEATURES", [],
        "DISTILL.MATCH_LEVELS", "stride", "MODEL.RPN.POST_NMS_TOPK_TRAIN", 20,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16] + list(opts))
    model = build_model(cfg)
    model.train()
    return model


def batch_of(*sizes):
    """Images (BGR uint8, as the demo student reads them) of the given (height, width), one box
    each."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(0)
    batch = []
    for h, w in sizes:
        instances = Instances((h, w), gt_boxes=Boxes(torch.tensor([[4.0, 6.0, w - 10.0, h - 8.0]])),
                              gt_classes=torch.tensor([1]))
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        batch.append({"image": image, "instances": instances, "height": h, "width": w})
    return batch


def teacher_backbone_input(model, batch):
    """One training step of ``model`` on ``batch``: (losses, the tensor the teacher's backbone
    received)."""
    seen = []
    handle = model.teacher.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with EventStorage():
            losses = model(batch)
    finally:
        handle.remove()
    assert len(seen) == 1
    return losses, seen[0]


# ------------------------------------------------------------------------------------------------
# both Detectron2s: the crop rule and the pipeline comparison
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extent, stride, expected", [
    ((64, 80), 4, (16, 20)), ((63, 77), 4, (16, 20)), ((64, 80), 64, (1, 2)),
    ((64, 80), 16, (4, 5)), ((200, 300), 4, (32, 32)),  # never more than the map has
])
def test_crop_keeps_ceil_of_the_image_extent_over_the_stride(extent, stride, expected):
    feature = torch.arange(32 * 32.0).view(1, 1, 32, 32)
    got = crop_to_images(feature, stride, extent)
    assert tuple(got.shape[-2:]) == expected
    assert torch.equal(got, feature[..., :expected[0], :expected[1]])  # top-left: where images are


def test_same_pipeline_means_same_format_normalisation_and_padding(tmp_path):
    teacher_config = os.path.join(CONFIGS, "demo", "det_teacher.yaml")
    student = build_model(load_nst_cfg(os.path.join(CONFIGS, "demo", "det_student.yaml")))
    assert same_input_pipeline(student, build_teacher_model(teacher_config))
    for body in ("INPUT:\n  FORMAT: 'RGB'\n", "MODEL:\n  PIXEL_STD: [1.0, 1.0, 1.0]\n"):
        variant = tmp_path / "variant.yaml"
        variant.write_text(f'_BASE_: "{teacher_config}"\n{body}')
        assert not same_input_pipeline(student, build_teacher_model(str(variant))), body
    teacher = build_teacher_model(teacher_config)
    teacher.backbone._size_divisibility = 16  # FPN's own attribute on both Detectron2s
    assert not same_input_pipeline(student, teacher)


# ------------------------------------------------------------------------------------------------
# Detectron2's main: the pipelines kept apart
# ------------------------------------------------------------------------------------------------
@needs_main
@pytest.mark.parametrize("kind", list(SHIPPED))
def test_teacher_input_is_what_the_teachers_own_preprocessing_makes(kind, tiny_teachers):
    model = build_pair(kind, tiny_teachers)
    assert (model.input_format, model.teacher.input_format) == ("BGR", "RGB")
    batch = batch_of((64, 80), (56, 72))
    _, got = teacher_backbone_input(model, batch)
    rgb = [{"image": x["image"].flip(0)} for x in batch]  # the teacher's channel order
    assert torch.equal(got, model.teacher.preprocess_image(rgb).tensor)
    # ... which is, written out: ImageNet RGB mean/std, zero padding at the bottom and right,
    # to the teacher's square (ViTDet) or to multiples of 32 (MViTv2 FPN)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    assert tuple(got.shape) == ((2, 3, SQUARE, SQUARE) if kind == "vitdet" else (2, 3, 64, 96))
    for i, x in enumerate(batch):
        h, w = x["image"].shape[1:]
        assert torch.allclose(got[i, :, :h, :w], (x["image"].flip(0).float() - mean) / std)
        assert not got[i, :, h:].any() and not got[i, :, :, w:].any()


@needs_main
def test_matched_maps_are_cropped_to_the_images_before_nst(tiny_teachers):
    """loss_nst = weight x sum over p2-p6 of MMD^2 of the student's and the teacher's maps, both
    cut to ceil(64 / stride) x ceil(80 / stride): the student pads 64 x 80 to 64 x 96, the ViTDet
    teacher to 128 x 128; neither's padding is compared."""
    model = build_pair("vitdet", tiny_teachers)
    batch = batch_of((64, 80), (48, 64))
    assert model.student_features == model.teacher_features == ["p2", "p3", "p4", "p5", "p6"]
    losses, teacher_input = teacher_backbone_input(model, batch)
    with torch.no_grad():
        student = model.backbone(model.preprocess_image(batch).tensor)
        teacher = model.teacher.backbone(teacher_input)
    expected = 0.0
    for level, stride in zip(model.student_features, (4, 8, 16, 32, 64)):
        rows, cols = math.ceil(64 / stride), math.ceil(80 / stride)
        assert student[level].shape[-2:] != teacher[level].shape[-2:] or stride == 64
        expected += nst_loss(student[level][..., :rows, :cols], teacher[level][..., :rows, :cols],
                             **model.nst_kwargs)
    assert losses["loss_nst"].item() == pytest.approx(model.nst_weight * expected.item(), rel=1e-4)


@needs_main
@pytest.mark.parametrize("kind", list(SHIPPED))
def test_training_distils_into_the_student_only_with_layernorm_kept(kind, tiny_teachers):
    model = build_pair(kind, tiny_teachers)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with EventStorage() as storage:
        losses = model(batch_of((64, 80), (56, 72)))
        assert torch.isfinite(losses["loss_nst"]) and losses["loss_nst"] > 0
        losses["loss_nst"].backward(retain_graph=True)
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for n, p in model.named_parameters() if n.startswith("backbone."))
        sum(losses.values()).backward()
        optimizer.step()
        metrics = storage.latest()
    assert all(f"nst/p{i}" in metrics for i in range(2, 7))
    teacher = model.teacher
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)) for m in teacher.modules())
    assert any(isinstance(m, nn.LayerNorm) for m in teacher.modules())  # not frozen into BN


@needs_main
def test_an_image_larger_than_the_teachers_square_is_refused(tiny_teachers):
    model = build_pair("vitdet", tiny_teachers)
    with pytest.raises(ValueError, match=rf"up to 64 x 160 pixels .* {SQUARE} x {SQUARE} square"
                                         r".*INPUT.MAX_SIZE_TRAIN"):
        with EventStorage():
            model(batch_of((64, 160)))


@needs_main
def test_shipped_teacher_configs_build_the_projects_models():
    """The shipped LazyConfigs build the models of projects/ViTDet (ViT-B, square 1024) and
    projects/MViTv2 (MViTv2-T FPN), and the shipped students match all five levels by stride."""
    from detectron2.modeling.backbone import FPN, MViT, SimpleFeaturePyramid, ViT
    from nst_det.detection.meta_arch import pair_features

    for kind, (teacher_file, student_file) in SHIPPED.items():
        cfg = load_nst_cfg(os.path.join(CONFIGS, student_file), ["MODEL.DEVICE", "cpu"])
        assert cfg.DISTILL.TEACHER.CONFIG == os.path.join(TEACHERS, teacher_file)
        teacher = build_teacher_model(cfg.DISTILL.TEACHER.CONFIG)
        backbone = teacher.backbone
        assert teacher.input_format == "RGB"
        if kind == "vitdet":
            assert isinstance(backbone, SimpleFeaturePyramid) and isinstance(backbone.net, ViT)
            assert backbone.padding_constraints["square_size"] == 1024
            assert len(backbone.net.blocks) == 12 and backbone.net.blocks[0].norm1.normalized_shape == (768,)
            assert cfg.INPUT.MAX_SIZE_TRAIN <= 1024
        else:
            assert isinstance(backbone, FPN) and isinstance(backbone.bottom_up, MViT)
            assert len(backbone.bottom_up.blocks) == 10
        student = build_model(load_nst_cfg(os.path.join(CONFIGS, "coco_frcnn_R18_baseline.yaml"),
                                           ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]))
        pairs = pair_features(student.backbone, backbone, cfg.DISTILL.STUDENT_FEATURES,
                              cfg.DISTILL.TEACHER_FEATURES, cfg.DISTILL.MATCH_LEVELS)
        assert pairs[:2] == (["p2", "p3", "p4", "p5", "p6"],) * 2
        del teacher, backbone


@needs_main
def test_a_missing_timm_is_an_error_naming_the_package(tmp_path):
    code = ("import sys\n"
            "sys.modules['timm'] = None  # any import of timm now fails\n"
            "import nst_det.detection\n"
            "from nst_det.detection.teacher import build_teacher_model\n"
            f"build_teacher_model({os.path.join(TEACHERS, SHIPPED['vitdet'][0])!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert "ImportError: DISTILL.TEACHER.CONFIG" in proc.stderr, proc.stderr[-3000:]
    assert "needs the package timm" in proc.stderr and "pip install timm" in proc.stderr


# ------------------------------------------------------------------------------------------------
# Detectron2 v0.6: no transformer backbones
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(has_transformer_backbones(), reason="this Detectron2 has the backbones")
@pytest.mark.parametrize("kind", list(SHIPPED))
def test_on_detectron2_v06_a_transformer_teacher_says_it_needs_main(kind):
    cfg = load_nst_cfg(os.path.join(CONFIGS, SHIPPED[kind][1]),
                       ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    with pytest.raises(ImportError, match=r"DISTILL\.TEACHER\.CONFIG '.*"
                                          + SHIPPED[kind][0].replace(".", r"\.")
                                          + r"' builds a transformer backbone .*Detectron2's main"):
        build_model(cfg)


@needs_main
def test_roi_kd_works_across_the_two_pipelines(tiny_teachers):
    """The student's sampled proposals are in image pixels: the ViTDet teacher's box head pools
    them from its own (square-padded) maps."""
    model = build_pair("vitdet", tiny_teachers, "DISTILL.KD.WEIGHT", 1.0)
    losses, _ = teacher_backbone_input(model, batch_of((64, 80), (56, 72)))
    assert torch.isfinite(losses["loss_kd"]) and torch.isfinite(losses["loss_nst"])


def test_dense_kd_between_differently_padded_batches_is_refused():
    """Dense heads predict one logit per anchor of the padded batch: another padding, other
    anchors."""
    from detectron2.modeling import RetinaNet
    from nst_det.detection.load_config import student_cfg
    from nst_det.detection.meta_arch import DistillRetinaNet

    cfg = load_nst_cfg(os.path.join(CONFIGS, "voc_retinanet_R18_nst.yaml"),
                       ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    teacher = build_teacher_model(cfg.DISTILL.TEACHER.CONFIG)
    teacher.backbone._size_divisibility = 64  # FPN's own attribute on both Detectron2s
    with pytest.raises(ValueError, match="pad their batches differently"):
        DistillRetinaNet(teacher=teacher, student_features=["p3"], teacher_features=["p3"],
                         level_weights=[], nst_weight=1.0, kd_weight=1.0,
                         **RetinaNet.from_config(student_cfg(cfg)))
