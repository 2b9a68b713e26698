"""Tests of nst_det/engine/benchmark.py and tools/benchmark_distill.py on a tiny config: the table
and its last line ``overhead: X.XX``; the teacher runs without autograd and only as far as the
distillation needs (backbone and FPN for feature NST)."""
import os
import re
import runpy

import torch

import nst_det  # noqa: F401  (first: makes Detectron2 importable here)
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from distill_testing import ROOT, tiny_distill_cfg

from nst_det.engine.benchmark import synthetic_batch

TOOL = os.path.join(ROOT, "tools", "benchmark_distill.py")


def test_tool_prints_the_table_and_ends_with_the_overhead(tmp_path, capsys):
    cfg = tiny_distill_cfg(tmp_path)
    config_file = tmp_path / "distill.yaml"
    config_file.write_text(cfg.dump())
    tool = runpy.run_path(TOOL, run_name="benchmark_distill")
    args = tool["argument_parser"]().parse_args(
        ["--config-file", str(config_file), "--iters", "2", "--size", "64"])
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


def test_teacher_runs_without_autograd_and_only_its_backbone(tmp_path):
    cfg = tiny_distill_cfg(tmp_path)
    model = build_model(cfg)
    model.train()
    teacher = model.teacher
    calls = []
    teacher.backbone.register_forward_pre_hook(
        lambda m, args: calls.append(("backbone", torch.is_grad_enabled())))
    teacher.backbone.register_forward_hook(
        lambda m, args, out: calls.append(("grad", any(v.requires_grad for v in out.values()))))
    for name in ("proposal_generator", "roi_heads"):
        getattr(teacher, name).register_forward_pre_hook(
            lambda m, args, name=name: calls.append((name, None)))
    with EventStorage(0):
        losses = model(synthetic_batch(cfg, 64))
    sum(losses.values()).backward()
    assert calls == [("backbone", False), ("grad", False)]
    assert all(p.grad is None for p in teacher.parameters())
