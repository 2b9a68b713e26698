"""Tests of nst_det/detection/benchmark.py and tools/benchmark_distill.py on a tiny config: the table
and its last line ``overhead: X.XX``. (That the teacher runs without autograd and only as far as
distillation needs is tested in tests/test_ddp_distill.py, on the model built there.)"""
import os
import re
import runpy

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)

from distill_testing import ROOT, tiny_distill_cfg

TOOL = os.path.join(ROOT, "tools", "benchmark_distill.py")


def test_tool_prints_the_table_and_ends_with_the_overhead(tmp_path, capsys):
    cfg = tiny_distill_cfg(tmp_path)
    config_file = tmp_path / "distill.yaml"
    config_file.write_text(cfg.dump())
    tool = runpy.run_path(TOOL, run_name="benchmark_distill")
    args = tool["argument_parser"]().parse_args(
        ["--config-file", str(config_file), "--iters", "1", "--size", "64"])
    result = tool["main"](args)
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"overhead: \d+\.\d\d", lines[-1])
    assert float(lines[-1].split()[1]) == round(result.overhead, 2)
    assert result.overhead == result.distill.time_ms / (result.student.time_ms
                                                       + result.teacher.time_ms)
    assert result.image_size == (64, 85)
    for row in ("student training step", "teacher forward", "distillation training step",
                "NST term (forward + backward)"):
        assert any(line.startswith(f"| {row}") for line in lines), row
    for cost in (result.student, result.teacher, result.distill, result.nst):
        assert cost.time_ms > 0 and cost.peak_mib >= 0
    # a training step keeps activations for its backward; the teacher's forward does not
    assert result.distill.peak_mib > result.teacher.peak_mib
    assert 0 < result.nst_share < 1
