#!/usr/bin/env python
"""Benchmark nst_det's NST loss against the broadcast formulation of public PyTorch KD collections.

For each scale and kernel it measures forward+backward time and peak extra memory of
  - nst:        nst_det.losses.nst_loss (Gram matrices, hand-written backward),
  - floor:      per image, into buffers allocated once, the three Grams S S^T, T T^T, S T^T of
                the raw maps, (Gaussian) one in-place exp over all their entries, and the two
                backward products G_ss S + G_st T: every pair evaluated once and the gradient
                formed from the Grams, nothing else; "nst / floor" divides nst's time by it,
  - broadcast:  (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1) over an N x C x C x HW tensor per term,
  - gram+autograd (poly only): the same Gram-matrix formula with autograd's default backward,
and one torch.bmm(F, F^T) on the student map as the unit of time. Broadcast runs whose estimated
memory exceeds --max-gb are not run ("does not fit").

Time: the median of --repeats runs after one warm-up (one run if the warm-up took over 2 s);
"x bmm" divides it by the median of the bmm(F, F^T) runs timed between those runs, and
"nst / floor" nst's median by the median of the floor runs timed in turn with nst's, so load that
drifts during the run moves both sides of each ratio. Peak extra
memory: on CPU, the resident-set high-water mark (/proc/self/status VmHWM, reset through
/proc/self/clear_refs) minus the resident set before the run, with glibc told to return every
block >= 64 KiB to the system on free (MALLOC_MMAP_THRESHOLD_, set by re-executing this script),
so freed tensors leave the resident set; on CUDA,
torch.cuda.max_memory_allocated minus the memory allocated before the run. Inputs (student with
requires_grad, teacher) are allocated before the run; the student's gradient counts as extra.

    python tools/benchmark_losses.py [--device cpu|cuda] [--repeats 5] [--max-gb 8] [--threads N]
        [--scales classification detection-P2 detection-P3 cifar]
"""
import argparse
import os
import statistics
import sys
import time

import torch

from nst_det.research.measure import load_average, machine_description, seconds, seconds_and_peak_mib
from nst_det.losses import nst_loss
from nst_det.losses.nst import normalise_maps

MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"
SLOW_SECONDS = 2.0

# name: (N, C_S, C_T, H, W)
SCALES = {
    "classification": (64, 1024, 2048, 7, 7),
    "detection-P2": (2, 256, 256, 200, 336),
    "detection-P3": (2, 256, 256, 100, 168),
    # A scale where the broadcast form fits in memory, to compare against it.
    "cifar": (64, 256, 256, 8, 8),
}
KERNELS = ("linear", "poly", "gaussian")


def broadcast_mmd2(student, teacher, kernel):
    """The public KD collections' form: every pair through an [N, C, C, HW] tensor; -> scalar."""
    s, t = normalise_maps(student), normalise_maps(teacher.detach())

    def pairs(a, b):  # [N, C_a, HW], [N, C_b, HW] -> [N, C_b, C_a]
        if kernel == "gaussian":
            return (a.unsqueeze(1) - b.unsqueeze(2)).pow(2).sum(-1)
        return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1)

    p_tt, p_ss, p_st = pairs(t, t), pairs(s, s), pairs(s, t)
    if kernel == "poly":
        k_tt, k_ss, k_st = p_tt.pow(2), p_ss.pow(2), p_st.pow(2)
    elif kernel == "gaussian":
        c_s, c_t = s.shape[1], t.shape[1]
        total = p_tt.sum((1, 2)) + p_ss.sum((1, 2)) + 2 * p_st.sum((1, 2))
        scale = (-0.5 * (c_s + c_t) ** 2 / total.detach())[:, None, None]
        k_tt, k_ss, k_st = (torch.exp(p * scale) for p in (p_tt, p_ss, p_st))
    else:
        k_tt, k_ss, k_st = p_tt, p_ss, p_st
    return (k_tt.mean((1, 2)) + k_ss.mean((1, 2)) - 2 * k_st.mean((1, 2))).mean()


def gram_autograd_poly_mmd2(student, teacher):
    """Degree-2 polynomial MMD^2 from C x C Gram matrices with autograd's default backward; -> scalar."""
    s, t = normalise_maps(student), normalise_maps(teacher.detach())
    terms = [torch.bmm(a, b.transpose(1, 2)).pow(2).mean((1, 2)) for a, b in ((t, t), (s, s), (s, t))]
    return (terms[0] + terms[1] - 2 * terms[2]).mean()


def floor_products(student, teacher, kernel):
    """The floor for `kernel`: per image, S S^T, T T^T, S T^T of the raw maps [N, C, HW] (and, for
    the Gaussian, exp over all their entries, in place), then G_ss S + G_st T, every result into a
    buffer allocated once."""
    s, t = student.detach(), teacher.detach()
    c_s, c_t = s.shape[1], t.shape[1]
    g_ss, g_tt, g_st = s.new_empty(c_s, c_s), s.new_empty(c_t, c_t), s.new_empty(c_s, c_t)
    grad = torch.empty_like(s)
    for i in range(s.shape[0]):
        torch.mm(s[i], s[i].T, out=g_ss)
        torch.mm(t[i], t[i].T, out=g_tt)
        torch.mm(s[i], t[i].T, out=g_st)
        if kernel == "gaussian":
            for gram in (g_ss, g_tt, g_st):
                gram.exp_()
        torch.mm(g_ss, s[i], out=grad[i])
        grad[i].addmm_(g_st, t[i])


def broadcast_bytes(shape, kernel, element_size):
    """Estimated peak of the broadcast form: the largest pairwise tensor times 2 (its product and,
    in backward, the gradients of both factors), times 5 for the Gaussian (difference, square,
    their gradients): the factors measured at the cifar scale."""
    n, c_s, c_t, h, w = shape
    largest = n * max(c_s, c_t) ** 2 * h * w * element_size
    return largest * (5 if kernel == "gaussian" else 2)


class Meter:
    """Times and peak extra memory of one forward+backward on one device."""

    def __init__(self, device):
        self.device = device

    def seconds(self, fn):
        return seconds(fn, self.device)

    def seconds_and_peak_extra_bytes(self, fn):
        took, peak_mib = seconds_and_peak_mib(fn, self.device)
        return took, peak_mib * 2**20


def measure(meter, step, reference, repeats, floor=None):
    """step(): one forward+backward -> dict(seconds, x_bmm, peak, loss): the median of `repeats`
    runs after a warm-up, and its ratio to the median bmm(F, F^T) timed around those runs; a step
    slower than SLOW_SECONDS in its warm-up is timed once. With floor(), the floor is warmed up and
    timed after each run of step too, and the result gains "floor" (its own such dict) and
    "x_floor" (the ratio of the medians)."""
    start = time.perf_counter()
    loss = step()  # warm-up
    if time.perf_counter() - start > SLOW_SECONDS:
        repeats = 1
    if floor is not None:
        floor()
    times, bmm_times, peaks, floor_times, floor_peaks = [], [meter.seconds(reference)], [], [], []
    for _ in range(repeats):
        took, peak = meter.seconds_and_peak_extra_bytes(step)
        times.append(took)
        peaks.append(peak)
        if floor is not None:
            took, peak = meter.seconds_and_peak_extra_bytes(floor)
            floor_times.append(took)
            floor_peaks.append(peak)
        bmm_times.append(meter.seconds(reference))
    bmm = statistics.median(bmm_times)
    row = dict(seconds=statistics.median(times), peak=max(peaks), loss=loss)
    row["x_bmm"] = row["seconds"] / bmm
    if floor is not None:
        floor_seconds = statistics.median(floor_times)
        row["floor"] = dict(seconds=floor_seconds, x_bmm=floor_seconds / bmm, peak=max(floor_peaks), loss=None)
        row["x_floor"] = row["seconds"] / floor_seconds
    return row


def run_scale(name, shape, args, meter):
    n, c_s, c_t, h, w = shape
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(n, c_s, h, w, generator=gen).to(meter.device).requires_grad_()
    teacher = torch.randn(n, c_t, h, w, generator=gen).to(meter.device)
    flat = student.detach().flatten(2)
    input_bytes = student.numel() * student.element_size()

    def reference():
        torch.bmm(flat, flat.transpose(1, 2))

    def step_of(loss_fn):
        def step():
            student.grad = None
            loss = loss_fn()
            loss.backward()
            student.grad = None
            return loss.item()

        return step

    rows = [("bmm(F, F^T)", measure(meter, reference, reference, args.repeats))]
    rows[0][1]["loss"] = None
    maps = flat, teacher.flatten(2)
    for kernel in KERNELS:
        nst = measure(meter, step_of(lambda: nst_loss(student, teacher, kernel=kernel)), reference, args.repeats,
                      floor=lambda: floor_products(*maps, kernel))
        rows.append((f"nst {kernel}", nst))
        rows.append((f"floor {kernel}", nst.pop("floor")))
        if kernel == "poly":
            gram = measure(meter, step_of(lambda: gram_autograd_poly_mmd2(student, teacher)), reference, args.repeats)
            gram["vs"] = nst
            rows.append(("gram+autograd poly", gram))
        needs = broadcast_bytes(shape, kernel, student.element_size())
        if needs > args.max_gb * 1e9:
            rows.append((f"broadcast {kernel}", dict(needs=needs)))
            continue
        bcast = measure(meter, step_of(lambda: broadcast_mmd2(student, teacher, kernel)), reference, args.repeats)
        bcast["vs"] = nst
        rows.append((f"broadcast {kernel}", bcast))
    print_rows(name, shape, rows, input_bytes)
    return rows, input_bytes


def print_rows(name, shape, rows, input_bytes):
    n, c_s, c_t, h, w = shape
    print(f"\n### {name}: N={n}, C_S={c_s}, C_T={c_t}, {h}x{w}; one input map {input_bytes / 2**20:.1f} MiB\n")
    print("| method | fwd+bwd (s) | x bmm | nst / floor | peak extra (MiB) | x input | vs nst (x bmm, memory) | loss |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method, r in rows:
        if "needs" in r:
            print(f"| {method} | does not fit (needs {r['needs'] / 1e9:.0f} GB) | | | | | | |")
            continue
        vs = ""
        if "vs" in r:
            vs = f"{r['x_bmm'] / r['vs']['x_bmm']:.1f}x, {r['peak'] / max(r['vs']['peak'], 1):.0f}x"
        x_floor = f"{r['x_floor']:.2f}" if "x_floor" in r else ""
        loss = "" if r["loss"] is None else f"{r['loss']:.6g}"
        print(
            f"| {method} | {r['seconds']:.3f} | {r['x_bmm']:.2f} | {x_floor} | {r['peak'] / 2**20:.1f} | "
            f"{r['peak'] / input_bytes:.2f} | {vs} | {loss} |"
        )
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (after one warm-up)")
    parser.add_argument(
        "--max-gb", type=float, default=8.0, help="run the broadcast form only if its estimated peak is below (1e9 B)"
    )
    parser.add_argument("--scales", nargs="+", default=list(SCALES), choices=list(SCALES))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cpu" and os.environ.get(MMAP_THRESHOLD_ENV) is None:
        # Re-execute with freed blocks returned to the system, so the resident set tracks live memory.
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, MMAP_THRESHOLD_ENV: "65536"})
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    load_before = load_average()
    print(f"{machine_description(device)}; repeats {args.repeats}, max-gb {args.max_gb}; "
          f"load average {load_before:.2f}")
    meter = Meter(device)
    results = {name: run_scale(name, SCALES[name], args, meter) for name in args.scales}
    print("\nnst / floor (each kernel's nst_loss over its floor, timed in turn in this run):")
    for name, (rows, _) in results.items():
        ratios = ", ".join(f"{method[4:]} {r['x_floor']:.2f}" for method, r in rows if "x_floor" in r)
        print(f"- {name}: {ratios}")
    print(f"load average (1 min): {load_before:.2f} before, {load_average():.2f} after")


if __name__ == "__main__":
    main()
