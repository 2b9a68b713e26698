"""Tests of the detection selectivity picture (nst_det/research/selectivity_det.py) and of how
tools/visualize_selectivity.py tells the stages apart: the tool run as a user runs it on the
shipped demo NST config, the MMD^2 it reports against nst_loss on features computed here without
the library, the levels, and the errors naming a missing checkpoint, mismatched levels and a
config of neither stage."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.modeling import build_model
from nst_det.detection.data import register_demo_datasets
from nst_det.research.demo_data import generate_demo_data
from nst_det.detection.load_config import load_nst_cfg, load_teacher_cfg
from nst_det.detection.teacher import build_teacher_model
from nst_det.research.selectivity_det import detection_selectivity, save_detection_selectivity_figure
from nst_det.losses import nst_loss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "visualize_selectivity.py")
DEMO = os.path.join(REPO, "configs", "demo")
NST_CONFIG = os.path.join(DEMO, "det_student_nst.yaml")
LEVELS = ["p2", "p3", "p4", "p5", "p6"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny generated demo set (one 64 x 80 test image) under datasets/, registered in
    Detectron2's catalogs for this module, and randomly initialised checkpoints of the demo
    teacher, of the student alone and of the NST student ({"model": state_dict})."""
    root = tmp_path_factory.mktemp("selectivity")
    datasets = root / "datasets"
    generate_demo_data(str(datasets / "demo_det"), num_train=2, num_val=0, num_test=1,
                       height=64, width=80, seed=0)
    paths = {"root": root, "datasets": datasets}
    for name, seed, build_cfg in (
            ("teacher", 1, lambda: load_teacher_cfg(os.path.join(DEMO, "det_teacher.yaml"),
                                                    device="cpu")),
            ("alone", 2, lambda: load_nst_cfg(os.path.join(DEMO, "det_student.yaml"))),
            ("nst", 3, lambda: load_nst_cfg(os.path.join(DEMO, "det_student.yaml")))):
        torch.manual_seed(seed)
        paths[name] = str(root / f"{name}.pth")
        torch.save({"model": build_model(build_cfg()).state_dict()}, paths[name])
    register_demo_datasets(str(datasets))
    yield paths
    register_demo_datasets()  # back to $DETECTRON2_DATASETS


def nst_cfg(files, *opts):
    return load_nst_cfg(NST_CONFIG, ["DISTILL.TEACHER.WEIGHTS", files["teacher"], *opts])


def test_tool_draws_the_demo_nst_student_as_a_user_runs_it(files):
    user = files["root"] / "user"
    user.mkdir()
    env = dict(os.environ, DETECTRON2_DATASETS=str(files["datasets"]))
    proc = subprocess.run(
        [sys.executable, TOOL, "--config-file", NST_CONFIG, "--before", files["alone"],
         "--after", files["nst"], "--output", "pictures/selectivity.png", "--top-k", "3",
         "DISTILL.TEACHER.WEIGHTS", files["teacher"]],
        cwd=str(user), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    with open(user / "pictures" / "selectivity.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for level in LEVELS:
        assert f"level {level} (teacher {level}): MMD² to the teacher" in proc.stdout


def _features_here(model, cfg, image_file, names):
    """{name: [1, C, H, W]} of ``model``'s backbone for ``image_file`` made without the library:
    read as RGB, resized (PIL bilinear) to the demo's test size 128 x 160, turned to BGR,
    normalised by the config's PIXEL_MEAN / PIXEL_STD (128 x 160 needs no padding)."""
    image = Image.open(image_file).convert("RGB").resize((160, 128), Image.BILINEAR)
    bgr = torch.from_numpy(np.array(image)[:, :, ::-1].copy()).permute(2, 0, 1).float()
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    with torch.no_grad():
        features = model.eval().backbone(((bgr - mean) / std)[None])
    return {n: features[n] for n in names}


def test_reported_mmd2_is_nst_loss_of_each_level(files, tmp_path):
    cfg = nst_cfg(files)
    result = detection_selectivity(cfg, files["alone"], files["nst"], image_index=0)
    assert [(lv.student_feature, lv.teacher_feature) for lv in result.levels] == \
        [(n, n) for n in LEVELS]
    test_ids = (files["datasets"] / "demo_det" / "ImageSets" / "Main" / "test.txt").read_text()
    assert os.path.basename(result.image_file) == f"{test_ids.split()[0]}.jpg"
    assert tuple(result.image.shape) == (128, 160, 3)

    teacher = build_teacher_model(os.path.join(DEMO, "det_teacher.yaml"))
    teacher.load_state_dict(torch.load(files["teacher"])["model"])
    t = _features_here(teacher, cfg, result.image_file, ["p3", "p5"])
    student_cfg = load_nst_cfg(os.path.join(DEMO, "det_student.yaml"))
    for weights, attribute in ((files["alone"], "before"), (files["nst"], "after")):
        student = build_model(student_cfg)
        student.load_state_dict(torch.load(weights)["model"])
        s = _features_here(student, student_cfg, result.image_file, ["p3", "p5"])
        for index, name in ((1, "p3"), (3, "p5")):
            level = result.levels[index]
            assert torch.allclose(getattr(level, attribute), s[name][0], atol=1e-4)
            expected = nst_loss(s[name], t[name], kernel="poly", degree=2, coef=0.0).item()
            assert getattr(level, f"mmd2_{attribute}") == pytest.approx(expected, rel=1e-4)
    path = save_detection_selectivity_figure(cfg, result, str(tmp_path / "sel.png"), top_k=2)
    assert os.path.getsize(path) > 1000


def test_missing_checkpoint_and_mismatched_levels_are_named(files, tmp_path):
    missing = str(tmp_path / "missing_model_final.pth")
    with pytest.raises(FileNotFoundError, match="missing_model_final.pth.*NST student"):
        detection_selectivity(nst_cfg(files), "init", missing)
    with pytest.raises(FileNotFoundError, match="image file '.*no_such.png' \\(--image\\)"):
        detection_selectivity(nst_cfg(files), "init", files["nst"],
                              image_file=str(tmp_path / "no_such.png"))
    cfg = nst_cfg(files, "DISTILL.STUDENT_FEATURES", "['p3']", "DISTILL.TEACHER_FEATURES", "['p4']")
    with pytest.raises(ValueError, match=r"student level 'p3' is \(64, 16, 20\) but teacher "
                                         r"level 'p4' is \(96, 8, 10\)"):
        detection_selectivity(cfg, "init", files["nst"])


def test_the_config_file_decides_the_stage(tmp_path):
    spec = importlib.util.spec_from_file_location("visualize_selectivity", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.config_stage(NST_CONFIG) == "detection"
    assert tool.config_stage(os.path.join(DEMO, "cls_student_nst.yaml")) == "classification"
    shared = tmp_path / "shared.yaml"
    shared.write_text("DISTILL:\n  NST:\n    WEIGHT: 1.0\n")
    with pytest.raises(ValueError, match="'.*shared.yaml' sets only keys that both stages have"):
        tool.config_stage(str(shared))
    neither = tmp_path / "neither.yaml"
    neither.write_text("NOT_A_KEY: 1\n")
    with pytest.raises(ValueError, match="'.*neither.yaml' is neither a detection config "
                                         ".*NOT_A_KEY.*nor a classification config"):
        tool.config_stage(str(neither))
