"""Start one training function in every process of a job: the launcher of both tools
(``tools/train_net.py`` and ``tools/train_cls.py``).

- Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment): join the group
  with ``env://`` (NCCL on GPUs, gloo on the CPU) and run ``main_func`` once in this process.
- Otherwise Detectron2's ``launch`` (one process per GPU; ``--num-gpus``, ``--num-machines``,
  ``--machine-rank``, ``--dist-url`` as in every Detectron2 tool).
- On a machine without CUDA, where the installed Detectron2's ``launch`` requires CUDA (v0.6
  asserts it; its later versions fall back to gloo themselves): the same processes with
  ``torch.multiprocessing`` and the gloo backend, so ``--num-gpus N`` runs N CPU processes.

In every case Detectron2's ``comm`` helpers (rank, world size, local rank) work in ``main_func``.
An exception in one process ends the job with that exception (``torch.multiprocessing`` stops
the other processes).
"""
import logging
import os
import socket

import torch
import torch.distributed as dist
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from nst_det._d2_compat.cpu_launch import (DEFAULT_TIMEOUT, detectron2_launch_runs_on_cpu,
                                           launch_cpu_processes, make_local_group)

__all__ = ["launch", "free_port", "init_from_torchrun_env"]

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_from_torchrun_env() -> bool:
    """Join the process group described by torchrun's environment; False when not under torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if dist.is_initialized():
        return True
    world_size = int(os.environ["WORLD_SIZE"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    rank = int(os.environ["RANK"])
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://", world_size=world_size,
                            rank=rank, timeout=DEFAULT_TIMEOUT)
    make_local_group(world_size, local_size, rank // local_size)
    comm.synchronize()
    return True


def launch(main_func, num_processes_per_machine: int, num_machines: int = 1,
           machine_rank: int = 0, dist_url=None, args=()):
    """Run ``main_func(*args)`` in each process of the job (see the module docstring)."""
    if init_from_torchrun_env():
        return main_func(*args)
    world_size = num_processes_per_machine * num_machines
    if world_size <= 1:
        return main_func(*args)
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only; give tcp://HOST:PORT")
        # A rendezvous on this machine: Detectron2's main hands None on to torch, which then
        # asks for MASTER_ADDR.
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    if torch.cuda.is_available() or detectron2_launch_runs_on_cpu():
        return d2_launch(main_func, num_processes_per_machine, num_machines=num_machines,
                         machine_rank=machine_rank, dist_url=dist_url, args=args)
    logger.info(f"No GPU: running {num_processes_per_machine} CPU processes per machine on gloo")
    launch_cpu_processes(main_func, num_processes_per_machine, num_machines, machine_rank,
                         dist_url, args)
