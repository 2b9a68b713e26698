"""Two CPU processes through the tools themselves (``--num-gpus 2`` on a machine without CUDA):
a non-finite loss term on one rank stops every rank, with the same error naming the term, the
iteration and the rank, and the job ends instead of hanging (nst_det/engine/train_loop.py,
nst_det/engine/launch.py). The normal two-process runs of both tools are in tests/test_docs_commands.py.

The non-finite term comes from real data: the teacher's stem is scaled by 1e38, so every image
but an all-black one overflows in the teacher (its PIXEL_MEAN is 0, so black stays exactly 0 and
the stem gives 0). The training set holds one black and one ordinary image, one per rank.
"""
import os
import re
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from nst_det.detection.teacher import build_teacher_model
from nst_det.research.demo_data import generate_demo_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "80",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0",
        "DATALOADER.NUM_WORKERS", "0", "DATASETS.TRAIN", "('nst_demo_voc_train',)",
        "DATASETS.TEST", "()", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"]


def _black_and_ordinary_training_images(root):
    dirname = os.path.join(root, "demo_det")
    generate_demo_data(dirname, num_train=2, num_val=0, num_test=1, seed=3, height=64, width=80)
    with open(os.path.join(dirname, "ImageSets", "Main", "train.txt")) as f:
        first = f.readline().strip()
    path = os.path.join(dirname, "JPEGImages", f"{first}.jpg")
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(path, quality=95)
    assert np.asarray(Image.open(path)).max() == 0  # exactly black after decoding


def _overflowing_teacher(folder):
    """A teacher config (the demo teacher, PIXEL_MEAN 0, PIXEL_STD 1) and weights whose stem
    conv is scaled by 1e38: finite numbers in the file, inf on any image that is not black."""
    config = os.path.join(folder, "teacher.yaml")
    with open(config, "w") as f:
        f.write(f'_BASE_: "{os.path.join(REPO, "configs", "demo", "det_teacher.yaml")}"\n'
                "MODEL:\n  PIXEL_MEAN: [0.0, 0.0, 0.0]\n  PIXEL_STD: [1.0, 1.0, 1.0]\n")
    torch.manual_seed(0)
    state = build_teacher_model(config).state_dict()
    key = "backbone.bottom_up.stem.conv1.weight"
    state[key] = state[key] * 1e38
    assert torch.isfinite(state[key]).all()
    weights = os.path.join(folder, "teacher.pth")
    torch.save({"model": state}, weights)
    return config, weights


def test_non_finite_term_on_one_rank_stops_every_rank_naming_term_iteration_and_rank(tmp_path):
    datasets = tmp_path / "datasets"
    _black_and_ordinary_training_images(str(datasets))
    config, weights = _overflowing_teacher(str(tmp_path))
    work = tmp_path / "user"
    work.mkdir()
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--num-gpus", "2",
         "--config-file", os.path.join(REPO, "configs", "demo", "det_student_nst.yaml"), *TINY,
         "DISTILL.TEACHER.CONFIG", config, "DISTILL.TEACHER.WEIGHTS", weights,
         "OUTPUT_DIR", "out"],
        cwd=str(work), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300)  # a hang would end here, as a failure
    assert proc.returncode != 0, proc.stdout[-3000:]
    pattern = r"non-finite loss at iteration 0: (loss_nst = nan \(rank (\d)\))\. Training stopped"
    found = re.search(pattern, proc.stdout)
    assert found, proc.stdout[-3000:]
    # exactly one rank had the non-finite term (the other one's image is black)
    assert not re.search(r"\(rank \d\); ", found.group(0))
    # every rank stopped at the same iteration with the same error, in its own log
    logs = [work / "out" / "log.txt", work / "out" / "log.txt.rank1"]
    for log in logs:
        assert found.group(1) in log.read_text(), log
    # no optimizer step, no checkpoint of a bad state
    assert not (work / "out" / "model_final.pth").exists()
