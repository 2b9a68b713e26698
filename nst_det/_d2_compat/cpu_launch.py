"""Detectron2 v0.6's ``launch`` on a machine without CUDA, and the per-machine process group
that Detectron2's ``comm.get_local_rank`` reads.

v0.6's ``launch`` asserts CUDA in its worker, so ``--num-gpus N`` cannot start CPU processes there;
Detectron2's main starts gloo processes itself. :func:`detectron2_launch_runs_on_cpu` tells the two
apart by the worker's source; where it is False, :func:`launch_cpu_processes` starts the same
processes with ``torch.multiprocessing`` and gloo. :func:`make_local_group` sets Detectron2's
``comm._LOCAL_PROCESS_GROUP`` for process groups that Detectron2's own ``launch`` did not create
(these processes, and torchrun's).
"""
import importlib
import inspect
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

__all__ = ["detectron2_launch_runs_on_cpu", "launch_cpu_processes", "make_local_group"]

DEFAULT_TIMEOUT = timedelta(minutes=30)


def detectron2_launch_runs_on_cpu() -> bool:
    """Whether the installed Detectron2's ``launch`` starts CPU processes (gloo) without CUDA:
    its worker does not assert CUDA (v0.6's does)."""
    # (the attribute detectron2.engine.launch is the function: take the module by its name)
    launch_module = importlib.import_module("detectron2.engine.launch")
    worker = getattr(launch_module, "_distributed_worker", None)
    if worker is None:
        return True
    try:
        source = inspect.getsource(worker)
    except (OSError, TypeError):
        return True
    return "assert torch.cuda.is_available()" not in source


def make_local_group(world_size: int, local_size: int, machine_rank: int) -> None:
    """Create the per-machine process group that ``comm.get_local_rank`` needs."""
    for i in range(world_size // local_size):
        group = dist.new_group(list(range(i * local_size, (i + 1) * local_size)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _cpu_worker(local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args):
    rank = machine_rank * num_per_machine + local_rank
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size,
                            rank=rank, timeout=DEFAULT_TIMEOUT)
    make_local_group(world_size, num_per_machine, machine_rank)
    comm.synchronize()
    try:
        main_func(*args)
        # every process done before any tears the group down (a process that leaves while another
        # still talks to it aborts that one: "terminate called without an active exception")
        comm.synchronize()
    finally:
        dist.destroy_process_group()


def launch_cpu_processes(main_func, num_processes_per_machine: int, num_machines: int,
                         machine_rank: int, dist_url: str, args=()) -> None:
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` gloo processes of this machine
    (``dist_url``: the rendezvous, ``tcp://HOST:PORT``)."""
    world_size = num_processes_per_machine * num_machines
    mp.start_processes(
        _cpu_worker, nprocs=num_processes_per_machine,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args),
        daemon=False, start_method="spawn")
