"""Tests of nst_det/research/demo_det.py through tools/demo_det.py, run as a user runs it (a subprocess
from a folder outside the repository, the generated set under $DETECTRON2_DATASETS): the teacher
once, the student alone and the NST variants for every seed, the table with mean ± std and every
seed's value, the report files; and the table's arithmetic on known numbers."""
import json
import os
import subprocess
import sys

import pytest

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from nst_det.research.demo_data import generate_demo_data
from nst_det.research.demo_det import DEMO_CONFIGS, NST_CONFIG, demo_variants, format_table
from nst_det.detection.load_config import load_nst_cfg
from nst_det.research.seed_report import format_mean_std, mean_std

# the shipped weight of the NST student, and another
WEIGHT = load_nst_cfg(os.path.join(DEMO_CONFIGS, NST_CONFIG)).DISTILL.NST.WEIGHT
OTHER = WEIGHT / 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "demo_det.py")


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """tools/demo_det.py --seeds 2 --nst-weights OTHER WEIGHT --iters 2 on a tiny generated set,
    then a second run with --seeds 1 (the config's weight) that reuses the teacher."""
    root = tmp_path_factory.mktemp("demo_det")
    datasets = root / "datasets"
    generate_demo_data(str(datasets / "demo_det"), num_train=4, num_val=0, num_test=2, seed=4,
                       height=64, width=80)
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets))
    user = root / "user"
    user.mkdir()

    def run(*args, iters="2"):
        proc = subprocess.run([sys.executable, TOOL, "--iters", iters, "--threads", "1", *args],
                              cwd=str(user), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:]
        return proc.stdout

    out = user / "output" / "demo_det"
    first = run("--seeds", "2", "--nst-weights", f"{OTHER:g}", f"{WEIGHT:g}")
    first_summary = json.loads((out / "results.json").read_text())
    first_report = (out / "results.md").read_text()
    second = run("--seeds", "1", "--output-dir", "output/demo_det")
    second_summary = json.loads((out / "results.json").read_text())
    other_schedule = run("--seeds", "1", "--output-dir", "output/demo_det_3", iters="3")
    again = run("--seeds", "1", "--output-dir", "output/demo_det_3", iters="4")
    return {"out": out, "first": first, "first_summary": first_summary,
            "first_report": first_report, "second": second, "second_summary": second_summary,
            "other_schedule": other_schedule, "again": again}


def test_every_variant_runs_for_every_seed_and_the_teacher_once(tiny_demo):
    out = tiny_demo["out"]
    summary = tiny_demo["first_summary"]
    low, high = f"student + NST, weight {OTHER:g}", f"student + NST, weight {WEIGHT:g}"
    assert list(summary["variants"]) == ["student", low, high]
    for variant, runs in summary["variants"].items():
        assert [r["seed"] for r in runs] == [0, 1], variant
        for r in runs:
            assert {"AP50_11point", "AP50_area", "AP50-circle"} <= set(r["voc"])
            assert {"AP", "AP50", "AR100"} <= set(r["coco"])
    for folder in ("student", f"student_nst_w{OTHER:g}", f"student_nst_w{WEIGHT:g}"):
        for seed in (0, 1):
            assert (out / folder / f"seed{seed}" / "model_final.pth").is_file()
    # the teacher's schedule is scaled like the students' (500 / 300 of 2 iterations)
    assert summary["teacher"]["iterations"] == 3
    # the weight given reaches the run: loss_nst scales with it, the unweighted MMD^2 does not
    losses = summary["losses"]
    assert "loss_nst" not in losses["student"][0]["last"]
    for variant, weight in ((low, OTHER), (high, WEIGHT)):
        logged = losses[variant][0]["first"]
        levels = sum(v for k, v in logged.items() if k.startswith("nst/"))
        assert logged["loss_nst"] == pytest.approx(weight * levels, rel=1e-4), variant
    # two seeds train differently
    assert losses["student"][0] != losses["student"][1]


def test_the_report_is_printed_and_written_with_command_machine_and_wall_time(tiny_demo):
    out = tiny_demo["out"]
    report = tiny_demo["first_report"]
    assert report.startswith("- command: `python tools/demo_det.py --iters 2 --threads 1 --seeds 2 "
                             f"--nst-weights {OTHER:g} {WEIGHT:g}`")
    assert "machine: " in report and "1 torch threads" in report and "wall time: " in report
    assert report in tiny_demo["first"]  # printed as written
    for picture in ("seeds.png", "selectivity.png"):
        with open(out / picture, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", picture
    assert "channel maps: output/demo_det/selectivity.png" in tiny_demo["first"]
    # the second run reused the finished teacher and replaced the report
    assert "Reusing the trained teacher" in tiny_demo["second"]
    assert "Reusing the trained teacher" not in tiny_demo["first"]
    # a teacher of another schedule is trained again, not reused
    assert "Reusing the trained teacher" not in tiny_demo["again"]
    summary = tiny_demo["second_summary"]
    assert list(summary["variants"]) == ["student", "student + NST"]
    assert (out / "results.md").read_text().startswith(
        "- command: `python tools/demo_det.py --iters 2 --threads 1 --seeds 1 --output-dir "
        "output/demo_det`")


def test_a_rerun_reproduces_seed_zero(tiny_demo):
    """Seed 0 of the student alone trains to the same metrics and losses in both runs: another
    process, other runs around it, the teacher trained in one and reused in the other."""
    earlier = tiny_demo["first_summary"]
    again = tiny_demo["second_summary"]
    assert again["variants"]["student"][0]["voc"] == earlier["variants"]["student"][0]["voc"]
    assert again["variants"]["student"][0]["coco"] == earlier["variants"]["student"][0]["coco"]
    assert again["losses"]["student"][0] == earlier["losses"]["student"][0]
    assert again["losses"]["student + NST"][0] == earlier["losses"][f"student + NST, weight {WEIGHT:g}"][0]


def _result(seed, voc, coco, seconds=10.0):
    return {"seed": seed, "iterations": 300, "seconds": seconds,
            "voc": {"AP50_11point": voc, "AP50_area": voc + 1}, "coco": {"AP": coco, "AP50": coco + 2}}


def _losses(nst):
    entry = {"iteration": 19, "task_loss": 1.5}
    if nst:
        entry.update({"loss_nst": 3.0, "nst/p2": 0.2, "nst/p3": 0.1})
    return {"first": entry, "last": dict(entry, iteration=299)}


def test_table_gives_mean_std_each_seed_and_the_gap_closed():
    summary = {
        "teacher": dict(_result(0, 90.0, 70.0), iterations=500),
        "variants": {"student": [_result(0, 60.0, 40.0), _result(1, 62.0, 42.0), _result(2, 64.0, 44.0)],
                     "student + NST": [_result(0, 70.0, 50.0), _result(1, 74.0, 52.0),
                                       _result(2, 72.0, 54.0)]},
        "losses": {"student": [_losses(False)] * 3, "student + NST": [_losses(True)] * 3},
    }
    table = format_table(summary)
    assert "| teacher | 500 | 0 | 90.0 | 91.0 | 70.0 | 72.0 | 10 |" in table
    assert "| student | 300 | 0, 1, 2 | 62.0 ± 2.0 (60.0, 62.0, 64.0) |" in table
    assert "| student + NST | 300 | 0, 1, 2 | 72.0 ± 2.0 (70.0, 74.0, 72.0) |" in table
    # (72 - 62) / (90 - 62) = 36 % of the VOC gap; (52 - 42) / (70 - 42) = 36 % of the COCO gap;
    # standard error of the difference sqrt(2^2 / 3 + 2^2 / 3) = 1.6
    assert ("VOC AP50 (07 11-point) +10.0 ± 1.6 (36% of the gap to the teacher); COCO AP +10.0 ± "
            "1.6 (36% of the gap to the teacher)") in table
    assert "- student + NST, iteration 19: task loss 1.500, loss_nst 3.000" in table
    assert "p2 0.2, p3 0.1" in table


def test_difference_has_the_standard_error_of_two_means():
    from nst_det.research.seed_report import format_difference

    # means 3 and 1; sample variances 1 and 4, three values each: sqrt(1/3 + 4/3)
    assert format_difference([2.0, 3.0, 4.0], [3.0, 1.0, -1.0]) == "+2.00 ± 1.29"
    assert format_difference([2.0], [3.0], 1) == "-1.0"


def test_mean_std_is_the_sample_deviation():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, (5 / 3) ** 0.5))
    assert mean_std([7.0]) == (7.0, 0.0)
    assert format_mean_std([73.84]) == "73.8"
    assert format_mean_std([1.0, 3.0]) == "2.0 ± 1.4 (1.0, 3.0)"
    with pytest.raises(ValueError, match="no values"):
        mean_std([])


def test_variants_refuse_a_weight_that_is_not_positive():
    assert list(demo_variants()) == ["student", "student + NST"]
    assert demo_variants([2, 0.5])["student + NST, weight 0.5"][1] == ["DISTILL.NST.WEIGHT", 0.5]
    with pytest.raises(ValueError, match="--nst-weights: every weight must be > 0, got 0"):
        demo_variants([0])
    proc = subprocess.run([sys.executable, TOOL, "--seeds", "0"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--seeds must be at least 1, got 0" in proc.stderr
