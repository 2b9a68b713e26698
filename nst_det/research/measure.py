"""Time and peak memory of one call, on CUDA or the CPU: the measurements of both benchmarks
(``tools/benchmark_distill.py``, ``tools/benchmark_losses.py``); and the machine they, and the
demos, ran on."""
import ctypes
import gc
import os
import platform
import resource
import time
from typing import Callable, Tuple

import torch

__all__ = ["sync", "seconds", "seconds_and_page_faults", "peak_memory_mib", "seconds_and_peak_mib",
           "machine_description", "load_average"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable, device: torch.device) -> float:
    """Wall time of ``fn()`` in seconds, the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def seconds_and_page_faults(fn: Callable, device: torch.device) -> Tuple[float, int]:
    """Wall time (s) of ``fn()`` and the page faults the process took meanwhile (minor faults:
    pages the kernel had to map, and zero, for memory touched the first time)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    took = seconds(fn, device)
    return took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _release_free_memory() -> None:
    """Give the memory glibc keeps for freed blocks back to the system (malloc_trim), so the
    resident set before a run holds only live data and the run's rise is all its own."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def seconds_and_peak_mib(fn: Callable, device: torch.device) -> Tuple[float, float]:
    """Wall time (s) of one ``fn()`` and the largest rise of memory while it runs (MiB): on CUDA
    of the memory allocated by torch; on the CPU of the resident set (its high-water mark VmHWM,
    reset through /proc/self/clear_refs, minus the resident set before, free memory first
    returned to the system); NaN where neither is available."""
    if device.type == "cuda":
        sync(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        took = seconds(fn, device)
        return took, (torch.cuda.max_memory_allocated(device) - start) / 2**20
    if not os.access("/proc/self/clear_refs", os.W_OK):
        return seconds(fn, device), float("nan")
    _release_free_memory()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _status_kib("VmRSS")
    took = seconds(fn, device)
    return took, (_status_kib("VmHWM") - before) / 1024


def peak_memory_mib(fn: Callable, device: torch.device) -> float:
    """The memory part of :func:`seconds_and_peak_mib`."""
    return seconds_and_peak_mib(fn, device)[1]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_description(device: torch.device = torch.device("cpu")) -> str:
    """What a measurement ran on, e.g. "Intel(R) Xeon(R) Processor, 2 CPUs, torch 2.14.1, 2 torch
    threads" (the GPU's name first on CUDA)."""
    gpu = f"{torch.cuda.get_device_name(device)}; " if device.type == "cuda" else ""
    return (f"{gpu}{_cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads")


def load_average() -> float:
    """The system's 1-minute load average (NaN where the system has none): how busy the machine
    was around a measurement."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")
