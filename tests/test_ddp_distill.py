"""Two-process DDP (gloo, CPU) of DistillGeneralizedRCNN: the frozen teacher is not wrapped by
DistributedDataParallel (and runs without autograd, only its backbone), the two processes' losses
on one image each equal one process's losses on both images, and in a DistillTrainer run only
rank 0 writes checkpoints and metrics."""
import json
import os

import pytest
import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from torch.nn.parallel import DistributedDataParallel

from distill_testing import tiny_distill_cfg

from nst_det.engine.launch import launch
from nst_det.detection.data import register_demo_datasets
from nst_det.research.demo_data import generate_demo_data
from nst_det.research.benchmark_distill import synthetic_batch

# Settings under which a batch's losses are exactly the mean of its images' losses: every anchor
# and every proposal is sampled (no random subsampling), each image keeps 20 proposals + its
# 3 ground-truth boxes, and FrozenBN (batch statistics would differ between 1 and 2 images).
EXACT = [
    "MODEL.RESNETS.NORM", "FrozenBN",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 100000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 20,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 512,
]
# Tolerances (float32 sums in another order, other convolution algorithms for 1 and 2 images):
# losses relative; gradients relative to the largest magnitude of each gradient tensor (measured
# here: 5e-7 and 2e-5).
LOSS_RTOL = 1e-5
GRAD_TOL = 1e-4
IMAGE_SIZE = 64


def _losses_and_grads(model, batch):
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return {k: v.item() for k, v in losses.items()}, grads


def _record_teacher_calls(teacher):
    """[(part, grad enabled)] of the teacher's backbone, RPN and ROI heads, as they run."""
    calls = []
    teacher.backbone.register_forward_pre_hook(
        lambda m, args: calls.append(("backbone", torch.is_grad_enabled())))
    teacher.backbone.register_forward_hook(
        lambda m, args, out: calls.append(("output requires grad",
                                           any(v.requires_grad for v in out.values()))))
    for name in ("proposal_generator", "roi_heads"):
        getattr(teacher, name).register_forward_pre_hook(
            lambda m, args, name=name: calls.append((name, torch.is_grad_enabled())))
    return calls


def _worker(cfg, init_file, trainer_cfgs, datasets_root, result_file):
    rank = comm.get_rank()
    model = build_model(cfg)
    model.load_state_dict(torch.load(init_file))
    model.train()
    ddp = DistributedDataParallel(model, broadcast_buffers=False)
    teacher = model.teacher
    wrapped = {id(t) for t in list(ddp.parameters()) + list(ddp.buffers())}
    teacher_tensors = {id(t) for t in list(teacher.parameters()) + list(teacher.buffers())}
    losses, grads = _losses_and_grads(ddp, [synthetic_batch(cfg, IMAGE_SIZE)[rank]])
    report = {
        "teacher_tensors_in_ddp": len(wrapped & teacher_tensors),
        "teacher_keys_in_state_dict": [k for k in ddp.module.state_dict() if "teacher" in k],
        "teacher_grads": [n for n, p in teacher.named_parameters() if p.grad is not None],
        "losses": comm.all_gather(losses),
    }

    # The trainer of tools/train_net.py in two processes, each with its own OUTPUT_DIR
    # (Detectron2's create_ddp_model wraps the CPU model: nst_det._d2_compat).
    from nst_det.detection.trainer import DistillTrainer

    register_demo_datasets(datasets_root)
    trainer = DistillTrainer(trainer_cfgs[rank])
    report["trainer_model_is_ddp"] = isinstance(trainer.model, DistributedDataParallel)
    trainer.resume_or_load(resume=False)
    trainer.train()
    if rank == 0:
        torch.save({"report": report, "grads": grads}, result_file)


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    cfg = tiny_distill_cfg(folder, EXACT)
    torch.manual_seed(0)
    model = build_model(cfg)
    init_file = str(folder / "init.pth")
    torch.save(model.state_dict(), init_file)
    model.train()
    teacher_calls = _record_teacher_calls(model.teacher)
    reference = _losses_and_grads(model, synthetic_batch(cfg, IMAGE_SIZE))
    reference_teacher = (teacher_calls, [n for n, p in model.teacher.named_parameters()
                                         if p.grad is not None])

    datasets = folder / "datasets"
    generate_demo_data(str(datasets / "demo_det"), num_train=4, num_val=0, num_test=1,
                       height=64, width=80)
    trainer_cfgs = []
    for rank in range(2):
        c = cfg.clone()
        c.defrost()
        c.merge_from_list([
            "OUTPUT_DIR", str(datasets / "out" / f"rank{rank}"),
            "DATASETS.TRAIN", ("nst_demo_voc_trainval",), "DATASETS.TEST", (),
            "SOLVER.MAX_ITER", 1, "SOLVER.CHECKPOINT_PERIOD", 1, "SOLVER.WARMUP_ITERS", 1,
            "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 80,
        ])
        c.freeze()
        trainer_cfgs.append(c)
    result_file = str(folder / "result.pth")
    launch(_worker, 2, args=(cfg, init_file, trainer_cfgs, str(datasets), result_file))
    result = torch.load(result_file)
    return result, reference, [c.OUTPUT_DIR for c in trainer_cfgs], reference_teacher


def test_teacher_is_not_wrapped_by_ddp(ddp_result):
    (result, _, _, _) = ddp_result
    report = result["report"]
    assert report["teacher_tensors_in_ddp"] == 0
    assert report["teacher_keys_in_state_dict"] == []
    assert report["teacher_grads"] == []
    assert report["trainer_model_is_ddp"]


def test_teacher_runs_without_autograd_and_only_its_backbone(ddp_result):
    (_, _, _, (calls, teacher_grads)) = ddp_result
    assert calls == [("backbone", False), ("output requires grad", False)]  # no RPN, no ROI heads
    assert teacher_grads == []


def test_two_processes_equal_one_process_on_both_images(ddp_result):
    (result, (ref_losses, ref_grads), _, _) = ddp_result
    per_rank = result["report"]["losses"]
    assert set(per_rank[0]) == set(ref_losses) and "loss_nst" in ref_losses
    for name, ref in ref_losses.items():
        mean = (per_rank[0][name] + per_rank[1][name]) / 2
        assert mean == pytest.approx(ref, rel=LOSS_RTOL), name
    # DDP averages the gradients of the two processes: the gradient of the one-process loss
    assert set(result["grads"]) == set(ref_grads)
    for name, grad in result["grads"].items():
        ref = ref_grads[name]
        assert (grad - ref).abs().max() <= GRAD_TOL * ref.abs().max(), name


def test_only_rank_zero_writes_files(ddp_result):
    (_, _, (out0, out1), _) = ddp_result
    assert not os.path.exists(out1) or os.listdir(out1) == []
    files = set(os.listdir(out0))
    assert {"last_checkpoint", "model_0000000.pth", "model_final.pth", "metrics.json"} <= files
    with open(os.path.join(out0, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    assert "loss_nst" in rows[-1] and rows[-1]["iteration"] == 0
    state = torch.load(os.path.join(out0, "model_final.pth"), weights_only=False)["model"]
    assert not any(k.startswith("teacher") or ".teacher." in k for k in state)
