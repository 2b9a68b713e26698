"""Tests of nst_det/research/benchmark_distill.py and tools/benchmark_distill.py on a tiny config: the table,
the student and the teacher in every precision and layout of the CPU, ``distillation / student
step: X.XX``, ``parts ratio: X.XX`` and last line ``overhead: X.XX``, each the median of the
rounds' ratios. (That the teacher runs without autograd and only as far as
distillation needs is tested in tests/test_ddp_distill.py, on the model built there.)"""
import os
import re
import runpy

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)

from nst_det.engine.precision import bf16_support

from distill_testing import ROOT, tiny_distill_cfg

TOOL = os.path.join(ROOT, "tools", "benchmark_distill.py")


def test_tool_prints_the_table_and_ends_with_the_overhead(tmp_path, capsys):
    cfg = tiny_distill_cfg(tmp_path)
    config_file = tmp_path / "distill.yaml"
    config_file.write_text(cfg.dump())
    tool = runpy.run_path(TOOL, run_name="benchmark_distill")
    args = tool["argument_parser"]().parse_args(
        ["--config-file", str(config_file), "--iters", "3", "--size", "64"])
    result = tool["main"](args)
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.match(r"overhead: \d+\.\d\d \(distillation step / \(student step \+ teacher forward\), "
                    r"median of 3 rounds\)$", lines[-1])
    assert re.match(r"parts ratio: \d+\.\d\d \(", lines[-2])
    assert float(lines[-1].split()[1]) == round(result.overhead, 2)
    assert float(lines[-2].split()[2]) == round(result.parts_ratio, 2)
    # each ratio is taken within a round, then the median over the rounds
    rounds = zip(result.student.times_ms, result.teacher.times_ms, result.nst.times_ms,
                 result.distill.times_ms)
    per_round = sorted((d / (s + t), d / (s + t + n)) for s, t, n, d in rounds)
    assert result.overhead == sorted(r[0] for r in per_round)[1]
    assert result.parts_ratio == sorted(r[1] for r in per_round)[1]
    assert all(len(c.times_ms) == 3 for c in (result.student, result.teacher, result.distill))
    assert result.image_size == (64, 85)
    # the config's settings first: a float32 student, NCHW; a float32 teacher, channels-last
    # (DISTILL.TEACHER.CHANNELS_LAST's default); then the other layout of each
    for row in ("student training step, fp32 (config)", "teacher forward, fp32, channels-last "
                "(config)", "distillation training step", "NST term (forward + backward)",
                "student training step, fp32, channels-last", "teacher forward, fp32"):
        assert any(line.startswith(f"| {row} |") for line in lines), row
    # what distilling costs against the student alone, within each round, then the median
    line = next(x for x in lines if x.startswith("distillation / student step: "))
    assert float(line.split()[4]) == round(result.distill_to_student, 2)
    assert result.distill_to_student == sorted(
        d / s for s, d in zip(result.student.times_ms, result.distill.times_ms))[1]
    if bf16_support("cpu"):  # the other precision of the student and the teacher, same rounds
        names = {v.name for v in result.variants}
        assert {"student training step, bf16", "student training step, bf16, channels-last",
                "teacher forward, bf16", "teacher forward, bf16, channels-last"} <= names
        assert result.student_fp32 is result.student and result.student_amp.name.endswith("bf16")
        speedup = next(x for x in lines if x.startswith("student mixed-precision speed-up: "))
        assert float(speedup.split()[3]) == round(result.amp_speedup, 2)
    # the config's teacher with its norms not folded (DISTILL.TEACHER.FOLD_NORMS's default: folded)
    assert any(line.startswith("| teacher forward, fp32, channels-last, norms not folded |")
               for line in lines)
    # the floors: each part's multiply-adds (torch's FlopCounterMode) at the best rate measured
    # here in its precision, and the least distillation / student step they allow
    assert result.teacher_gmac > 0 and result.nst_gmac > 0
    assert set(result.rates["fp32"]) == {"matmul", "1x1 convolution"}
    rate = max(result.rates["fp32"].values())
    assert rate > 0 and result.best_rate("fp32") == rate
    assert result.teacher_floor_ms == 1000 * result.teacher_gmac / rate
    assert result.nst_floor_ms == 1000 * result.nst_gmac / rate
    floors = result.teacher_floor_ms + result.nst_floor_ms
    assert result.floor_ratio == sorted((s + floors) / s for s in result.student.times_ms)[1]
    line = next(x for x in lines if x.startswith("distillation / student step floor: "))
    assert float(line.split()[5]) == round(result.floor_ratio, 2)
    for part in ("teacher forward", "NST term"):
        assert any(x.startswith(f"{part} floor, fp32: ") for x in lines), part
    assert all(len(v.times_ms) == 3 for v in result.variants)
    assert all(cost.time_ms > 0 for cost in (result.student, result.teacher, result.distill,
                                               result.nst))
    # (what the peak measures is tested in tests/test_research_measure.py); a training step keeps activations for its backward; the teacher's forward does not
    assert result.distill.peak_mib > result.teacher.peak_mib
    assert 0 < result.nst_share < 1
