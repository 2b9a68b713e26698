"""The cost of the teacher (tools/benchmark_distill.py): in one run, with the same two images, the
time and peak memory of the plain student's training step, the teacher's forward alone (as far as
distillation needs it, without autograd, from the raw images as the distillation step takes them:
its own normalisation included), the NST term (forward and backward of ``loss_nst`` on the
features of a distillation step) and the distillation training step -- the student and the
teacher as the config sets them (SOLVER.AMP, MODEL.CHANNELS_LAST, DISTILL.TEACHER.PRECISION,
DISTILL.TEACHER.CHANNELS_LAST, DISTILL.TEACHER.FOLD_NORMS) and, unless ``variants`` is off, in
every other precision the device runs (float32, bfloat16, float16 on CUDA) and memory layout (NCHW,
channels-last), and the config's teacher with its norms folded the other way.

    distillation / student step = distillation step / student step (same student settings):
                                  what distilling costs against training the student alone
    overhead    = distillation step / (student step + teacher forward)
    parts ratio = distillation step / (student step + teacher forward + NST term)

    floor of a part = its multiply-adds (torch's FlopCounterMode, over what it ran) / the best
                      rate of a large matmul or 1x1 convolution in its precision, timed here:
                      the least it can take on this device (the teacher forward in its
                      precision, the NST term in float32)
    distillation / student step floor = (student step + teacher forward floor + NST term floor)
                                        / student step: the least distilling can add here

An overhead of 1.00 means distillation costs exactly a student step plus a teacher forward; a parts
ratio of 1.00 means the distillation step costs its three parts and nothing more (the hooks, the
second preprocessing, the gradient the NST term adds to the student's, the allocations of holding
both models' activations would show here).

Time: ``iters`` rounds after a warm-up round; each round runs every measurement back to back,
so each ratio is taken within a round (load that drifts between rounds moves both sides)
and the median over the rounds is reported, beside each step's median and fastest time. Peak
memory: the largest rise over the start of one run of each (peak_memory_mib: torch's allocated
memory on CUDA, the process's resident set on the CPU), in a separate round after the timed ones.
"""
import logging
import os
import statistics
import tempfile
import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch.utils.flop_counter import FlopCounterMode

from nst_det.detection.architectures import num_classes
from nst_det.detection.load_config import student_cfg
from nst_det.detection.teacher import build_teacher_model
from nst_det.engine.cpu_memory import freed_memory_is_kept, keep_freed_memory
from nst_det.engine.precision import PRECISIONS, amp_dtype, autocast, bf16_support, to_channels_last
from nst_det.research.measure import (load_average, machine_description, peak_memory_mib,
                                    seconds, seconds_and_page_faults)

__all__ = ["StepCost", "DistillBenchmark", "benchmark_distillation", "format_benchmark",
           "synthetic_batch", "peak_rates", "counted_gmac", "PROBE_SIDE", "probe_side"]

logger = logging.getLogger(__name__)

# Aspect ratio (width / height) of the synthetic images: VOC's typical 500 x 375.
_ASPECT = 4.0 / 3.0
_BOXES_PER_IMAGE = 3


@dataclass
class StepCost:
    """Times (ms) and page faults of every round, and peak extra memory (MiB), of one measured
    step."""

    name: str
    times_ms: List[float]
    peak_mib: float
    page_faults: List[int]

    @property
    def faults(self) -> int:
        """Median page faults of one run over the rounds."""
        return int(statistics.median(self.page_faults))

    @property
    def time_ms(self) -> float:
        """Median time over the rounds (ms)."""
        return statistics.median(self.times_ms)

    @property
    def fastest_ms(self) -> float:
        return min(self.times_ms)


@dataclass
class DistillBenchmark:
    """Everything tools/benchmark_distill.py prints."""

    config_file: str
    device: str
    image_size: tuple  # (H, W) of each of the 2 images
    iters: int
    student: StepCost  # the student's training step with the config's settings
    teacher: StepCost  # the teacher's forward with the config's settings
    distill: StepCost
    nst: Optional[StepCost]
    teacher_weights: str
    kept_freed_memory: bool
    load_average: tuple  # the machine's 1-minute load average before and after the run
    variants: List[StepCost] = field(default_factory=list)  # other settings, the same rounds
    student_fp32: Optional[StepCost] = None  # the student in float32 (of the same layout)
    student_amp: Optional[StepCost] = None  # the student in mixed precision (of the same layout)
    teacher_gmac: Optional[float] = None  # multiply-adds of the teacher's forward (1e9)
    nst_gmac: Optional[float] = None  # multiply-adds of the NST term, forward and backward (1e9)
    rates: Dict[str, Dict[str, float]] = field(default_factory=dict)  # {precision: {op: GMAC/s}}
    teacher_precision: str = "fp32"  # the precision the config's teacher runs in

    def _per_round(self, parts: List[StepCost], whole: Optional[StepCost] = None) -> float:
        """Median over the rounds of ``whole`` (the distillation step) / sum of ``parts``, each
        round on its own."""
        whole = whole or self.distill
        return statistics.median(
            d / sum(p.times_ms[i] for p in parts) for i, d in enumerate(whole.times_ms))

    @property
    def distill_to_student(self) -> float:
        """distillation step / student step (the same student settings): median of the rounds'
        ratios."""
        return self._per_round([self.student])

    @property
    def overhead(self) -> float:
        """distillation step / (student step + teacher forward): median of the rounds' ratios."""
        return self._per_round([self.student, self.teacher])

    @property
    def parts_ratio(self) -> Optional[float]:
        """distillation step / (student step + teacher forward + NST term): median of the
        rounds' ratios; None without an NST term."""
        return None if self.nst is None else self._per_round([self.student, self.teacher, self.nst])

    @property
    def nst_share(self) -> Optional[float]:
        """Time of the NST term (forward + backward) / time of the distillation step (medians)."""
        return None if self.nst is None else self.nst.time_ms / self.distill.time_ms

    def best_rate(self, precision: str) -> Optional[float]:
        """The best multiply-add rate measured in ``precision`` (GMAC/s), None if not measured."""
        return max(self.rates[precision].values()) if self.rates.get(precision) else None

    def _floor_ms(self, gmac: Optional[float], precision: str) -> Optional[float]:
        rate = self.best_rate(precision)
        return None if gmac is None or not rate else 1000.0 * gmac / rate

    @property
    def teacher_floor_ms(self) -> Optional[float]:
        """The teacher's multiply-adds at the best rate in its precision (ms)."""
        return self._floor_ms(self.teacher_gmac, self.teacher_precision)

    @property
    def nst_floor_ms(self) -> Optional[float]:
        """The NST term's multiply-adds at the best float32 rate (ms)."""
        return self._floor_ms(self.nst_gmac, "fp32")

    @property
    def floor_ratio(self) -> Optional[float]:
        """(student step + teacher forward floor + NST term floor) / student step: median of the
        rounds' ratios; None where a floor is missing."""
        floors = (self.teacher_floor_ms, self.nst_floor_ms if self.nst is not None else 0.0)
        if None in floors:
            return None
        return statistics.median((s + sum(floors)) / s for s in self.student.times_ms)

    @property
    def amp_speedup(self) -> Optional[float]:
        """float32 student step / mixed-precision student step (same layout): median of the
        rounds' ratios; None where only one of them was measured."""
        if self.student_fp32 is None or self.student_amp is None:
            return None
        return self._per_round([self.student_amp], whole=self.student_fp32)


def synthetic_batch(cfg, size: Optional[int] = None, seed: int = 0) -> List[dict]:
    """Two training inputs of Detectron2's format: uint8 images [3, H, W] with H = ``size`` (the
    config's INPUT.MIN_SIZE_TEST when None), W = 4/3 H capped at INPUT.MAX_SIZE_TEST, and three
    ground-truth boxes each."""
    height = int(size or cfg.INPUT.MIN_SIZE_TEST)
    width = int(round(height * _ASPECT))
    if cfg.INPUT.MAX_SIZE_TEST:
        width = min(width, int(cfg.INPUT.MAX_SIZE_TEST))
    rng = np.random.default_rng(seed)
    batch = []
    for _ in range(2):
        image = torch.from_numpy(rng.integers(0, 256, size=(3, height, width), dtype=np.uint8))
        x0 = rng.uniform(0, 0.6, _BOXES_PER_IMAGE) * width
        y0 = rng.uniform(0, 0.6, _BOXES_PER_IMAGE) * height
        w = rng.uniform(0.15, 0.4, _BOXES_PER_IMAGE) * width
        h = rng.uniform(0.15, 0.4, _BOXES_PER_IMAGE) * height
        boxes = np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(np.float32)
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.from_numpy(boxes))
        instances.gt_classes = torch.from_numpy(
            rng.integers(0, num_classes(cfg), _BOXES_PER_IMAGE)).long()
        batch.append({"image": image, "height": height, "width": width, "instances": instances})
    return batch


def _frozen_optimizer(cfg, model):
    """The config's optimizer with learning rate 0: every step does its full work (momentum,
    weight decay, clipping) but the weights stay put, so repeated rounds neither diverge nor drift."""
    optimizer = build_optimizer(cfg, model)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    return optimizer


def _train_step(model, optimizer, batch, amp: Optional[torch.dtype], device) -> Callable:
    """One training step, under autocast in ``amp`` (None: float32) as TrainLoop runs it."""
    def step():
        with autocast(amp, device) if amp is not None else contextlib.nullcontext():
            loss_dict = model(batch)
        losses = sum(loss_dict.values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
    return step


def _set_layout(module, channels_last: bool) -> None:
    """``module``'s own children (a distilling model's teacher is none of them) channels-last or
    NCHW."""
    if channels_last:
        to_channels_last(module)
    else:
        for child in module.children():
            child.to(memory_format=torch.contiguous_format)


def _device_precisions(device: torch.device) -> List[str]:
    """The precisions ``device`` runs: "fp32", "bf16" where it has bfloat16, "fp16" on CUDA."""
    return ["fp32"] + (["bf16"] if bf16_support(device) else []) + \
        (["fp16"] if device.type == "cuda" else [])


def _label(what: str, precision: str, channels_last: bool, config: bool, note: str = "") -> str:
    return (f"{what}, {precision}" + (", channels-last" if channels_last else "")
            + (f", {note}" if note else "") + (" (config)" if config else ""))


# Size n of the rate probes: an n^3 matmul, and the same multiply-adds as a 1x1 convolution (n
# channels in and out, n positions, channels-last): on the CPU 2048 (the rates of 4096 measured
# the same or lower, at 7 times the time), on CUDA 8192 (tensor cores need large products).
PROBE_SIDE = {"cpu": 2048, "cuda": 8192}


def probe_side(device) -> int:
    """n of the rate probes on ``device`` (a device or its type's name)."""
    return PROBE_SIDE.get(torch.device(device).type, PROBE_SIDE["cpu"])


def peak_rates(device: torch.device, precisions: List[str], repeats: int = 3
               ) -> Dict[str, Dict[str, float]]:
    """{precision: {"matmul": GMAC/s, "1x1 convolution": GMAC/s}}: a matmul and a 1x1 convolution
    (channels-last) of n^3 multiply-adds (n = PROBE_SIDE) in each precision on ``device``, fastest of
    ``repeats`` after one untimed. The faster is the best rate a network's multiply-adds reach
    here through torch's kernels (a CPU's BLAS and its oneDNN convolutions can differ twofold)."""
    n = probe_side(device)
    rates = {}
    for precision in precisions:
        kw = dict(device=device, dtype=PRECISIONS[precision] or torch.float32)  # None: float32
        a, b = torch.randn(n, n, **kw), torch.randn(n, n, **kw)
        x = torch.randn(1, n, 64, n // 64, **kw).contiguous(memory_format=torch.channels_last)
        w = torch.randn(n, n, 1, 1, **kw).contiguous(memory_format=torch.channels_last)
        rates[precision] = {}
        for op, fn in (("matmul", lambda: a @ b), ("1x1 convolution", lambda: F.conv2d(x, w))):
            fn()
            rates[precision][op] = n**3 / min(seconds(fn, device) for _ in range(repeats)) / 1e9
    return rates


def counted_gmac(fn: Callable) -> float:
    """Multiply-adds (1e9) of the matmuls and convolutions ``fn()`` runs, forward and backward, as
    torch's FlopCounterMode counts them (2 flops each; elementwise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2e9


class _Recorder:
    """Wraps ``obj.name`` so the arguments of its last call are kept (to replay it alone)."""

    def __init__(self, obj, name: str):
        self.obj, self.name = obj, name
        self.args = None
        original = getattr(obj, name)

        def recording(*args, **kwargs):
            self.args = (args, kwargs)
            return original(*args, **kwargs)

        setattr(obj, name, recording)

    def remove(self):
        delattr(self.obj, self.name)  # back to the class's method


def _benchmark_teacher(cfg, tmpdir: str):
    """``(cfg, description)``: ``cfg`` whose DISTILL.TEACHER.WEIGHTS exists: the given file,
    else the randomly initialised teacher saved in ``tmpdir`` (a forward costs the same)."""
    weights = cfg.DISTILL.TEACHER.WEIGHTS
    if weights and os.path.isfile(weights):
        return cfg, weights
    teacher = build_teacher_model(cfg.DISTILL.TEACHER.CONFIG, device=cfg.MODEL.DEVICE)
    random_weights = os.path.join(tmpdir, "random_teacher.pth")
    torch.save({"model": teacher.state_dict()}, random_weights)
    logger.info(f"teacher weights '{weights}' not found: timing a randomly initialised teacher")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DISTILL.TEACHER.WEIGHTS = random_weights
    cfg.freeze()
    return cfg, "random (file not found: the cost does not depend on the values)"


def benchmark_distillation(cfg, iters: int = 10, size: Optional[int] = None,
                           config_file: str = "", keep_memory: bool = True,
                           variants: bool = True) -> DistillBenchmark:
    """Measure student step, teacher forward, distillation step and NST term of ``cfg`` (a config
    of a distilling detector) on the same two images, on its MODEL.DEVICE; with ``variants``, also
    the student step and the teacher forward in every other precision and layout the device runs;
    see the module docstring. On the CPU, freed memory is kept for reuse as training keeps it
    (:func:`~nst_det.engine.cpu_memory.keep_freed_memory`) unless ``keep_memory`` is False."""
    if iters < 1:
        raise ValueError(f"--iters must be at least 1, got {iters}")
    load_before = load_average()
    device = cfg.MODEL.DEVICE
    dev = torch.device(device)
    if keep_memory and dev.type == "cpu":
        keep_freed_memory()
    kept = dev.type == "cpu" and freed_memory_is_kept()
    amp = amp_dtype(cfg.SOLVER.AMP.PRECISION, dev, "SOLVER.AMP.PRECISION") \
        if cfg.SOLVER.AMP.ENABLED else None
    amp_name = next(n for n, d in PRECISIONS.items() if d == amp) if amp is not None else "fp32"
    student_layout, teacher_layout = bool(cfg.MODEL.CHANNELS_LAST), \
        bool(cfg.DISTILL.TEACHER.CHANNELS_LAST)
    teacher_precision = cfg.DISTILL.TEACHER.PRECISION or amp_name  # "": as the student's step
    with tempfile.TemporaryDirectory() as tmpdir:
        cfg, teacher_weights = _benchmark_teacher(cfg, tmpdir)
        torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
        distill = build_model(cfg)
        if not hasattr(distill, "teacher"):
            raise ValueError(
                f"MODEL.META_ARCHITECTURE '{cfg.MODEL.META_ARCHITECTURE}' has no teacher: "
                "benchmark a distillation config (e.g. configs/voc_frcnn_nst.yaml)")
        distill.teacher_dtype()  # DISTILL.TEACHER.PRECISION refused before anything is timed
        student = build_model(student_cfg(cfg))
        student.load_state_dict(distill.state_dict())
        other_fold = None
        if variants:  # the config's teacher with its norms folded the other way
            other_cfg = cfg.clone()
            other_cfg.defrost()
            other_cfg.DISTILL.TEACHER.FOLD_NORMS = not cfg.DISTILL.TEACHER.FOLD_NORMS
            other_fold = build_model(other_cfg)
    distill.train()
    student.train()
    _set_layout(distill, student_layout)
    batch = synthetic_batch(cfg, size)
    distill_step = _train_step(distill, _frozen_optimizer(cfg, distill), batch, amp, dev)
    student_optimizer = _frozen_optimizer(cfg, student)

    def config_layouts():
        _set_layout(distill.teacher, teacher_layout)

    with EventStorage(0):
        images_call = _Recorder(distill, "teacher_images")
        teacher_call = _Recorder(distill, "_teacher_forward")
        nst_call = _Recorder(distill, "nst_per_level")
        try:
            config_layouts()
            distill_step()  # warm-up; keeps the teacher's and NST's inputs of this batch
        finally:
            for call in (images_call, teacher_call, nst_call):
                call.remove()
        # name -> (what is set before it, untimed; what is timed)
        measured: Dict[str, Tuple[Callable, Callable]] = {}
        precisions = _device_precisions(dev)
        student_settings = [(amp_name, student_layout)]
        teacher_settings = [(teacher_precision, teacher_layout)]
        if variants:
            student_settings += [(p, cl) for cl in (False, True) for p in precisions
                                 if (p, cl) != student_settings[0]]
            teacher_settings += [(p, cl) for cl in (False, True) for p in precisions
                                 if (p, cl) != teacher_settings[0]]
        names = {}
        for i, (precision, channels_last) in enumerate(student_settings):
            name = _label("student training step", precision, channels_last, i == 0)
            names["student", precision, channels_last] = name
            measured[name] = (
                lambda cl=channels_last: _set_layout(student, cl),
                _train_step(student, student_optimizer, batch, PRECISIONS[precision], dev))
        fold_note = "" if cfg.DISTILL.TEACHER.FOLD_NORMS else "norms not folded"
        for i, (precision, channels_last) in enumerate(teacher_settings):
            name = _label("teacher forward", precision, channels_last, i == 0, fold_note)
            measured[name] = (
                lambda cl=channels_last: _set_layout(distill.teacher, cl),
                _teacher_step(distill, images_call.args, teacher_call.args, precision))
            if i == 0:
                config_teacher_step = measured[name][1]
        if other_fold is not None:
            other_note = "norms folded" if fold_note else "norms not folded"
            measured[_label("teacher forward", teacher_precision, teacher_layout, False,
                            other_note)] = (
                lambda: _set_layout(other_fold.teacher, teacher_layout),
                _teacher_step(other_fold, images_call.args, teacher_call.args, teacher_precision))
        distill_name = "distillation training step"
        measured[distill_name] = (config_layouts, distill_step)
        if nst_call.args:
            measured["NST term (forward + backward)"] = (config_layouts,
                                                         _nst_step(distill, nst_call.args))
        for prepare, fn in measured.values():  # a warm-up round, in the order of the timed ones
            prepare()
            fn()
        times: Dict[str, List[float]] = {k: [] for k in measured}
        faults: Dict[str, List[int]] = {k: [] for k in measured}
        for _ in range(iters):
            for name, (prepare, fn) in measured.items():
                prepare()
                took, page_faults = seconds_and_page_faults(fn, dev)
                times[name].append(1000.0 * took)
                faults[name].append(page_faults)
        peaks = {}
        for name, (prepare, fn) in measured.items():
            prepare()
            peaks[name] = peak_memory_mib(fn, dev)
        config_layouts()
        teacher_gmac = counted_gmac(config_teacher_step)
        nst_gmac = counted_gmac(_nst_step(distill, nst_call.args)) if nst_call.args else None
        rates = peak_rates(dev, precisions)

    costs = {name: StepCost(name, times[name], peaks[name], faults[name]) for name in measured}
    rows = list(costs.values())
    student_row, teacher_row = rows[0], rows[len(student_settings)]
    other = "fp32" if amp_name != "fp32" else ("bf16" if "bf16" in precisions else None)
    other_row = costs.get(names.get(("student", other, student_layout), ""))
    fp32_row, amp_row = (student_row, other_row) if amp_name == "fp32" else (other_row, student_row)
    height, width = batch[0]["image"].shape[1:]
    return DistillBenchmark(
        config_file=config_file,
        device=device,
        image_size=(int(height), int(width)),
        iters=iters,
        student=student_row,
        teacher=teacher_row,
        distill=costs[distill_name],
        nst=costs.get("NST term (forward + backward)"),
        teacher_weights=teacher_weights,
        kept_freed_memory=kept,
        load_average=(load_before, load_average()),
        variants=[c for c in rows if c not in (student_row, teacher_row)
                  and c.name.startswith(("student", "teacher"))],
        student_fp32=fp32_row,
        student_amp=amp_row,
        teacher_gmac=teacher_gmac,
        nst_gmac=nst_gmac,
        rates=rates,
        teacher_precision=teacher_precision,
    )


def _teacher_step(model, images_args, forward_args, precision: str) -> Callable:
    """The teacher's part of one distillation step alone, in ``precision``: its input made from
    the raw images (``teacher_images``) and its forward, with the arguments they had in that
    step."""
    (batched_inputs, student_images), _ = images_args
    (_, *forward_rest), forward_kwargs = forward_args
    forward_kwargs = dict(forward_kwargs, precision=precision)

    def run():
        model._teacher_forward(model.teacher_images(batched_inputs, student_images), *forward_rest,
                               **forward_kwargs)
    return run


def _nst_step(model, args) -> Callable:
    """loss_nst's forward and backward alone, from the features of one distillation step."""
    (student_features, teacher_features), _ = args
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in student_features.items()
              if k in model.student_features}

    def run():
        terms = model.nst_per_level(leaves, teacher_features)
        loss = model.nst_weight * sum(w * t for w, t in zip(model.level_weights, terms))
        loss.backward()
        for leaf in leaves.values():
            leaf.grad = None
    return run


def format_benchmark(result: DistillBenchmark) -> str:
    """The table of tools/benchmark_distill.py (the config's settings first, marked "(config)",
    then the other settings measured in the same rounds); then ``distillation / student step:
    X.XX``, the student's mixed-precision speed-up where both precisions were measured, and as
    its last two lines ``parts ratio: X.XX`` (with an NST term) and ``overhead: X.XX``."""
    h, w = result.image_size
    lines = [
        f"config: {result.config_file or '(given cfg)'}; device: {result.device}; "
        f"2 images of {h} x {w}; {result.iters} round(s); teacher weights: "
        f"{result.teacher_weights}",
        f"machine: {machine_description(torch.device(result.device))}; freed memory "
        + ("kept for reuse (as training keeps it)" if result.kept_freed_memory
           else "managed by malloc's defaults")
        + f"; load average (1 min) {result.load_average[0]:.2f} before, "
          f"{result.load_average[1]:.2f} after",
        "",
        "| step | median time (ms) | fastest (ms) | page faults (median) | peak memory (MiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    rows = [result.student, result.teacher, result.distill]
    if result.nst is not None:
        rows.append(result.nst)
    for row in rows + result.variants:
        lines.append(f"| {row.name} | {row.time_ms:.1f} | {row.fastest_ms:.1f} | {row.faults} | "
                     f"{row.peak_mib:.1f} |")
    lines.append("")
    lines.append(f"distillation / student step: {result.distill_to_student:.2f} (distillation step "
                 f"/ student step of the same settings, median of {result.iters} rounds)")
    if result.rates:
        lines.append(f"rates here ({probe_side(result.device)}^3 multiply-adds, fastest of 3): " + "; ".join(
            f"{p} " + ", ".join(f"{op} {r:.0f}" for op, r in ops.items()) + " GMAC/s"
            for p, ops in result.rates.items()))
    parts = [("teacher forward", result.teacher, result.teacher_gmac, result.teacher_floor_ms,
              result.teacher_precision),
             ("NST term", result.nst, result.nst_gmac, result.nst_floor_ms, "fp32")]
    for what, cost, gmac, floor, precision in parts:
        if cost is not None and floor is not None:
            lines.append(f"{what} floor, {precision}: {floor / 1000:.2f} s = {gmac:.1f} GMAC "
                         f"(torch's FlopCounterMode) at {result.best_rate(precision):.0f} GMAC/s; "
                         f"measured {cost.time_ms / 1000:.2f} s = {cost.time_ms / floor:.2f}x")
    if result.floor_ratio is not None:
        lines.append(f"distillation / student step floor: {result.floor_ratio:.2f} ((student step "
                     f"+ teacher forward floor + NST term floor) / student step, median of "
                     f"{result.iters} rounds)")
    if result.amp_speedup is not None:
        lines.append(f"student mixed-precision speed-up: {result.amp_speedup:.2f} "
                     f"({result.student_fp32.name} / {result.student_amp.name}, median of "
                     f"{result.iters} rounds)")
    if result.nst_share is not None:
        lines.append(f"NST term share of the distillation step: {100 * result.nst_share:.1f}%")
        lines.append(f"parts ratio: {result.parts_ratio:.2f} (distillation step / (student step + "
                     f"teacher forward + NST term), median of {result.iters} rounds)")
    lines.append(f"overhead: {result.overhead:.2f} (distillation step / (student step + teacher "
                 f"forward), median of {result.iters} rounds)")
    return "\n".join(lines)
