"""Reduced precision and memory layout, on any device, for both stages.

- The teacher's precision (``DISTILL.TEACHER.PRECISION``): its forward runs under ``torch.autocast``
  in bfloat16 or float16 and what it gives the losses is cast back to float32
  (:func:`float32_outputs`), so NST and KD are computed in float32 whatever the teacher ran in.
- The student's mixed precision (detection ``SOLVER.AMP``, classification ``SOLVER.AMP``): the
  training step under autocast in the dtype of :func:`amp_dtype` -- bfloat16 on a CPU that has it,
  float16 (with a grad scaler) or bfloat16 on CUDA.
- Channels-last (:func:`to_channels_last`): a network's 4-D weights stored NHWC, so its convolutions
  run in that layout (oneDNN on the CPU, tensor cores on CUDA).

Where a device cannot run a precision, :func:`precision_dtype` refuses it with a ValueError naming
the key, never a silent float32 run.
"""
from typing import Optional

import contextlib

import torch
from torch import nn

__all__ = ["PRECISIONS", "AS_STUDENT", "precision_dtype", "amp_dtype", "bf16_support", "autocast",
           "float32_outputs", "to_channels_last", "needs_grad_scaler"]

# The teacher's precision "": as the student's step runs -- inside the student's mixed-precision
# autocast when there is one, float32 otherwise (autocast left as it is).
AS_STUDENT = "as the student"
# Names of the precisions a key takes -> the autocast dtype (None: float32, autocast turned off).
PRECISIONS = {"": AS_STUDENT, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_support(device) -> str:
    """How ``device`` runs bfloat16: "native" (CUDA with bfloat16 arithmetic; a CPU with
    AVX512-BF16 or AMX), "emulated" (a CPU whose oneDNN computes bfloat16 with AVX-512 float32
    instructions: correct, rarely faster) or "" (none: autocast would fall back to slow reference
    kernels)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "native" if torch.cuda.is_bf16_supported() else ""
    if device.type != "cpu":
        return ""
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return "native"
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "emulated"
    return ""


def precision_dtype(precision: str, device, key: str) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` ("fp32" | "bf16" | "fp16") on ``device``; None for
    "fp32", :data:`AS_STUDENT` for "". A ValueError naming ``key`` for an unknown name, float16
    off CUDA, or bfloat16 on a device without it."""
    if precision not in PRECISIONS:
        raise ValueError(f"{key} is {precision!r}: it must be one of {list(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"{key} is 'fp16' but the device is '{device}': float16 autocast is for "
                         f"CUDA; on the CPU use 'bf16' (or 'fp32')")
    if precision == "bf16" and not bf16_support(device):
        raise ValueError(f"{key} is 'bf16' but the device '{device}' has no bfloat16 arithmetic "
                         f"(CUDA: compute capability >= 8.0; CPU: AVX-512 or AMX); use 'fp32'"
                         + (" or 'fp16'" if device.type == "cuda" else ""))
    return PRECISIONS[precision]


def amp_dtype(precision: str, device, key: str) -> torch.dtype:
    """The student's autocast dtype for mixed precision: ``precision`` "" = float16 on CUDA,
    bfloat16 on the CPU; else "bf16" or "fp16" as :func:`precision_dtype` allows."""
    if precision == "":
        precision = "fp16" if torch.device(device).type == "cuda" else "bf16"
    if precision not in PRECISIONS:
        raise ValueError(f"{key} is {precision!r}: it must be one of {list(PRECISIONS)}")
    if precision == "fp32":
        raise ValueError(f"{key} is 'fp32': mixed precision runs in 'bf16' or 'fp16' ('' = the "
                         f"device's default); turn mixed precision off instead")
    return precision_dtype(precision, device, key)


def needs_grad_scaler(dtype: Optional[torch.dtype]) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 has float32's range."""
    return dtype == torch.float16


def autocast(dtype: Optional[torch.dtype], device):
    """``torch.autocast`` on ``device``'s type (a device or its type's name) in ``dtype``; for None,
    autocast turned off: float32 even inside an enclosing autocast (a float32 teacher stays float32
    in a student's mixed-precision step); for :data:`AS_STUDENT`, autocast left as it is."""
    if dtype is AS_STUDENT:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if dtype is None:
        return torch.autocast(device_type=device_type, enabled=False)
    return torch.autocast(device_type=device_type, dtype=dtype)


def float32_outputs(value):
    """``value`` with every floating-point tensor in it (nested dicts, lists, tuples) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, dict):
        return {k: float32_outputs(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(float32_outputs(v) for v in value)
    return value


def to_channels_last(module: nn.Module) -> nn.Module:
    """``module`` with its 4-D parameters and buffers stored channels-last (in place). Its
    convolutions then run NHWC whatever the layout of their input; other layers are unaffected.
    Only the module's own children: a teacher held outside the module tree stays as it is."""
    for child in module.children():
        child.to(memory_format=torch.channels_last)
    for name, p in list(module.named_parameters(recurse=False)):
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return module
