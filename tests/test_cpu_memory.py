"""Tests of nst_det/engine/cpu_memory.py: with freed memory kept, a large tensor allocated, written
and freed again and again takes no page fault once the heap has room for it (after one or two
rounds: an aligned allocation needs a little more than the block just freed); with malloc's
defaults every round takes them all (each run in its own process: the setting lasts for it)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CODE = """
import json, resource, sys
import torch
from nst_det.engine.cpu_memory import freed_memory_is_kept, keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # once; a second call answers the same
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(64 * 2**20 // 4)  # 64 MiB: above glibc's largest mmap threshold
    x.fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"faults": faults, "kept": freed_memory_is_kept()}))
"""


def _faults(mode):
    proc = subprocess.run([sys.executable, "-c", CODE, mode], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_without_page_faults():
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    default = _faults("default")
    kept = _faults("keep")
    assert not default["kept"] and kept["kept"]
    # malloc's defaults: every allocation is a fresh mapping, every page faulted in again
    assert all(f > 0.9 * pages for f in default["faults"]), default
    # kept: the first allocation faults its pages in, the last ones reuse them
    assert kept["faults"][0] > 0.9 * pages
    assert all(f < 0.01 * pages for f in kept["faults"][-2:]), kept
