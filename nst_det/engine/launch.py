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

Before any process starts, :func:`check_launch_options` refuses, naming the option, a
``--num-gpus`` or ``--num-machines`` below 1, a ``--machine-rank`` outside [0, --num-machines),
more processes per machine than the machine has GPUs (when CUDA is there, so the processes would
take one GPU each), and, on the machine of rank 0, a rendezvous port of ``--dist-url`` that is
already in use (torch would fail in every process with EADDRINUSE).
"""
import errno
import logging
import os
import socket

import torch
import torch.distributed as dist
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from nst_det._d2_compat.cpu_launch import (DEFAULT_TIMEOUT, detectron2_launch_runs_on_cpu,
                                           launch_cpu_processes, make_local_group)

__all__ = ["launch", "free_port", "init_from_torchrun_env", "check_launch_options",
           "check_rendezvous_port"]

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_rendezvous_port(dist_url: str) -> None:
    """RuntimeError naming the address and ``--dist-url auto`` when the port of ``dist_url``
    (``tcp://HOST:PORT``) cannot be listened on here: the rendezvous of rank 0 would fail."""
    if not isinstance(dist_url, str) or not dist_url.startswith("tcp://"):
        return
    host, _, port = dist_url[len("tcp://"):].rstrip("/").rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--dist-url {dist_url}: expected tcp://HOST:PORT")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's TCPStore does
        try:
            s.bind(("", int(port)))  # the store of rank 0 listens on every address
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                return  # not ours to judge (e.g. a privileged port): torch says what it says
            raise RuntimeError(
                f"--dist-url {dist_url}: address {host}:{port} is already in use (another job's "
                f"rendezvous?): give a free port, or --dist-url auto to pick one (one machine "
                f"only)") from e


def check_launch_options(num_processes_per_machine, num_machines, machine_rank,
                         dist_url=None) -> None:
    """ValueError naming the option for an impossible ``--num-gpus`` (< 1, or more than this
    machine's GPUs when CUDA is available: each process takes one), ``--num-machines`` (< 1) or
    ``--machine-rank`` (outside [0, --num-machines)); RuntimeError for a rendezvous port in use
    (:func:`check_rendezvous_port`, on the machine of rank 0 of a multi-process job)."""
    if not _is_int(num_processes_per_machine) or num_processes_per_machine < 1:
        raise ValueError(f"--num-gpus is {num_processes_per_machine!r}: the number of processes "
                         f"per machine must be >= 1 (1 without a GPU: MODEL.DEVICE cpu)")
    if not _is_int(num_machines) or num_machines < 1:
        raise ValueError(f"--num-machines is {num_machines!r}: it must be >= 1")
    if not _is_int(machine_rank) or not 0 <= machine_rank < num_machines:
        raise ValueError(f"--machine-rank is {machine_rank!r} but --num-machines is "
                         f"{num_machines}: the rank of this machine must be in 0..{num_machines - 1}")
    if torch.cuda.is_available() and num_processes_per_machine > torch.cuda.device_count():
        raise ValueError(f"--num-gpus is {num_processes_per_machine} but this machine has "
                         f"{torch.cuda.device_count()} GPU(s) (torch.cuda.device_count()): each "
                         f"process takes one GPU; give --num-gpus "
                         f"{torch.cuda.device_count()} or fewer")
    if num_processes_per_machine * num_machines > 1 and machine_rank == 0:
        check_rendezvous_port(dist_url)


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
    check_launch_options(num_processes_per_machine, num_machines, machine_rank,
                         None if dist_url == "auto" else dist_url)
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
