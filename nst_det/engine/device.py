"""The device a config asks for, checked before anything is built."""
import torch

__all__ = ["check_device"]


def check_device(device: str, key: str = "MODEL.DEVICE") -> torch.device:
    """``torch.device(device)``; a ValueError naming ``key`` when it is not a device, or when it
    asks for CUDA on a machine without a usable CUDA device."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{key} '{device}' is not a device (e.g. 'cuda', 'cuda:1', 'cpu'): {e}"
                         ) from e
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{key} is '{device}' but this machine has no usable CUDA device: pass "
                f"{key} cpu on the command line (e.g. `python tools/train_net.py --config-file ... "
                f"{key} cpu`) or run on a machine with a GPU.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{key} is '{device}' but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return parsed
