"""Tests of nst_det/research/demo_cls.py and nst_det/research/selectivity_cls.py: the table, the curves, the maps."""
import json
import os

import pytest
import torch

from cls_testing import save_teacher

from nst_det.research.demo_cls import DEMO_CONFIGS, format_table, plot_curves, plot_seeds, val_curve
from nst_det.research.selectivity_cls import (
    normalised_maps,
    save_selectivity_figure,
    selective_channels,
)

RESULTS = {"teacher": {"top1": 99.0, "curve": [90.0, 99.0]},
           "runs": {"student alone": [{"seed": 0, "top1": 90.0, "curve": [80.0, 90.0]},
                                      {"seed": 1, "top1": 94.0, "curve": [82.0, 94.0]}],
                    "NST (poly)": [{"seed": 0, "top1": 95.0, "curve": [85.0, 95.0]},
                                   {"seed": 1, "top1": 97.0, "curve": [86.0, 97.0]}],
                    "KD": [{"seed": 0, "top1": 97.0, "curve": [85.0, 97.0]},
                           {"seed": 1, "top1": 97.5, "curve": [86.0, 97.5]}],
                    "NST (poly) + KD": [{"seed": 0, "top1": 98.0, "curve": [85.0, 98.0]},
                                        {"seed": 1, "top1": 98.5, "curve": [86.0, 98.5]}]}}


def test_table_gives_mean_sample_std_each_seed_and_the_differences():
    table = format_table(RESULTS)
    assert "| teacher | 99.00 | 0 |" in table
    assert "| student: student alone | 92.00 ± 2.83 (90.00, 94.00) | 0, 1 |" in table
    assert "| student: NST (poly) | 96.00 ± 1.41 (95.00, 97.00) | 0, 1 |" in table
    # 96 - 92, standard error sqrt(1.41^2 / 2 + 2.83^2 / 2) = sqrt(1 + 4); the KD pair:
    # sample deviations 0.354 each, sqrt(2 * 0.354^2 / 2) = 0.35
    assert "- NST (poly) against student alone: +4.00 ± 2.24 points" in table
    assert "- NST (poly) + KD against KD: +1.00 ± 0.35 points" in table
    assert "- KD against KD" not in table


def test_curves_are_saved_as_png(tmp_path):
    path = plot_curves(RESULTS, str(tmp_path / "curves.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_seeds_picture_draws_results_and_loss_curves(tmp_path):
    runs = {}
    for method, keys in (("student alone", ["loss_cls"]), ("NST (poly)", ["loss_cls", "loss_nst"])):
        runs[method] = []
        for seed in (0, 1):
            folder = tmp_path / f"{method}_{seed}"
            folder.mkdir()
            rows = [dict({k: 1.0 / (i + 1) for k in keys}, iteration=i) for i in range(5)]
            (folder / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows))
            runs[method].append({"seed": seed, "top1": 90.0 + seed, "output_dir": str(folder)})
    path = plot_seeds({"teacher": {"top1": 99.0}, "runs": runs}, str(tmp_path / "seeds.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_val_curve_reads_metrics_json(tmp_path):
    rows = [{"iteration": 0, "lr": 0.1}, {"iteration": 1, "epoch": 1, "val/top1": 50.0},
            {"iteration": 3, "epoch": 2, "val/top1": 75.0}]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows))
    assert val_curve(str(tmp_path)) == [50.0, 75.0]


def test_normalised_maps_have_unit_norm_and_peaked_channels_rank_first():
    feats = torch.ones(3, 4, 4)
    feats[1] = 0
    feats[1, 2, 2] = 5.0  # one position only: the most selective channel
    feats[2, :2] = 3.0    # half of the positions
    maps = normalised_maps(feats)
    assert torch.allclose(maps.flatten(1).norm(dim=1), torch.ones(3), atol=1e-6)
    assert selective_channels(maps, 3).tolist() == [1, 2, 0]


def test_selectivity_figure_for_two_student_checkpoints(tmp_path):
    teacher = save_teacher(tmp_path, "demo_teacher", num_classes=10)
    after = save_teacher(tmp_path, "demo_student_wide", num_classes=10, seed=3)
    config = os.path.join(DEMO_CONFIGS, "cls_student_nst.yaml")
    path = save_selectivity_figure(config, ["DISTILL.TEACHER.WEIGHTS", teacher], "init", after,
                                   str(tmp_path / "sel.png"), image_index=3, top_k=4)
    assert os.path.getsize(path) > 1000
    with pytest.raises(FileNotFoundError, match="student weights file '.*missing.pth'"):
        save_selectivity_figure(config, ["DISTILL.TEACHER.WEIGHTS", teacher], "init",
                                str(tmp_path / "missing.pth"), str(tmp_path / "x.png"))


def test_teacher_takes_only_the_overrides_of_its_images_and_device():
    from nst_det.research.demo_cls import teacher_overrides

    opts = ["MODEL.STUDENT.NAME", "demo_student", "DATA.IMAGE_SIZE", 16, "DISTILL.NST.WEIGHT", 5.0,
            "MODEL.DEVICE", "cpu"]
    assert teacher_overrides(opts) == ["DATA.IMAGE_SIZE", 16, "MODEL.DEVICE", "cpu"]
    from nst_det.research.demo_cls import run_demo

    with pytest.raises(ValueError, match=r"config overrides must be KEY VALUE pairs, got 1 items: "
                                         r"\['DATA.IMAGE_SIZE'\]"):
        run_demo("unused", opts=["DATA.IMAGE_SIZE"])


def _demo_tool(cwd, *args):
    import subprocess
    import sys

    tool = os.path.join(os.path.dirname(DEMO_CONFIGS), "..", "tools", "demo_cls.py")
    proc = subprocess.run([sys.executable, tool, "--epochs", "1", "--teacher-epochs", "1", *args],
                          cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def test_demo_tool_runs_every_weight_and_seed_and_reuses_a_teacher_of_the_same_config(tmp_path):
    first = _demo_tool(tmp_path, "--seeds", "2", "--methods", "student alone", "NST (poly)",
                       "--nst-weights", "5", "10", "--", "DATA.IMAGE_SIZE", "16")
    out = tmp_path / "output" / "demo_cls"
    report = (out / "results.md").read_text()
    assert report.startswith("- command: `python tools/demo_cls.py --epochs 1 --teacher-epochs 1 "
                             "--seeds 2 --methods \"student alone\" \"NST (poly)\" --nst-weights 5 10 "
                             "-- DATA.IMAGE_SIZE 16`")
    assert "1 torch threads" in report and report in first
    for method in ("student alone", "NST (poly), weight 5", "NST (poly), weight 10"):
        assert f"| student: {method} |" in report and f"| 0, 1 |" in report
    assert "- NST (poly), weight 10 against student alone: " in report
    saved = json.loads((out / "demo_results.json").read_text())
    assert [r["seed"] for r in saved["runs"]["NST (poly), weight 10"]] == [0, 1]
    for picture in ("curves.png", "seeds.png", "selectivity.png"):
        assert (out / picture).stat().st_size > 1000, picture
    assert "Training the teacher" in first
    # the same teacher settings: reused; another image size: trained again
    again = _demo_tool(tmp_path, "--seeds", "1", "--methods", "student alone", "--",
                       "DATA.IMAGE_SIZE", "16", "DISTILL.NST.WEIGHT", "3.0")
    assert "Reusing the trained teacher" in again
    other = _demo_tool(tmp_path, "--seeds", "1", "--methods", "student alone", "--",
                       "DATA.IMAGE_SIZE", "24")
    assert "Training the teacher" in other and "Reusing" not in other
