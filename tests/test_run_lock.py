"""One training run per OUTPUT_DIR (nst_det.engine.run_lock): a second live tools/train_net.py in
the same folder is refused naming the holder; a lock left by a dead run is taken over with a
warning; the classification trainer takes the same lock. The tool runs are subprocesses from a
folder outside the repository (tiny demo set, CPU)."""
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from cls_testing import PatternDataset, tiny_cfg
from nst_det.engine.run_lock import LOCK_FILE, RunLockError, acquire_run_lock, release_run_lock
from nst_det.research.demo_data import generate_demo_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
STUDENT = os.path.join(REPO, "configs", "demo", "det_student.yaml")
TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "80", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "80", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.DEVICE", "cpu", "TEST.EVAL_PERIOD", "0"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_lock_data")
    generate_demo_data(str(root / "demo_det"), num_train=4, num_val=0, num_test=2,
                       height=64, width=80)
    return dict(os.environ, DETECTRON2_DATASETS=str(root))


def _train_net(cwd, env, max_iter, **kwargs):
    return subprocess.Popen(
        [sys.executable, TRAIN_NET, "--config-file", STUDENT, *TINY, "SOLVER.MAX_ITER",
         str(max_iter), "OUTPUT_DIR", "out", "DATASETS.TEST", "()"],
        cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        **kwargs)


def test_second_run_in_the_same_output_dir_is_refused_naming_the_first(tmp_path, env):
    """before: two runs in one OUTPUT_DIR overwrote each other's checkpoints and metrics."""
    first = _train_net(tmp_path, env, 100000)
    lock = tmp_path / "out" / LOCK_FILE
    try:
        deadline = time.time() + 120
        while not lock.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert lock.exists(), first.stdout.read() if first.poll() is not None else "no lock"
        second = _train_net(tmp_path, env, 1)
        out, _ = second.communicate(timeout=180)
        assert second.returncode != 0
        assert re.search(
            rf"RunLockError: OUTPUT_DIR 'out' is in use by another run \(host "
            rf"{re.escape(socket.gethostname())}, pid {first.pid}, started [-0-9: ]+: .*"
            rf"train_net.py .*\); lock file '{re.escape(str(lock))}'. Wait for it to end or give "
            rf"another OUTPUT_DIR", out), out
        assert first.poll() is None  # the first run goes on, its lock kept
        assert json.loads(lock.read_text())["pid"] == first.pid
    finally:
        first.kill()
        first.communicate()


def test_lock_of_a_dead_run_is_taken_over_with_a_warning_and_released(tmp_path, env):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "out").mkdir()
    lock = tmp_path / "out" / LOCK_FILE
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                "started": time.time() - 60, "command": "python killed.py"}))
    run = _train_net(tmp_path, env, 1)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    assert (f"taking over the lock '{lock}' of a run that is no longer alive (host "
            f"{socket.gethostname()}, pid {dead.pid}, started ") in out, out
    assert not lock.exists()  # given back at the end


def test_classification_trainer_takes_the_same_lock(tmp_path):
    from nst_det.classification.trainer import ClsTrainer

    cfg = tiny_cfg(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from nst_det.engine.run_lock import "
         "acquire_run_lock; acquire_run_lock(sys.argv[1]); print('held', flush=True); "
         "time.sleep(120)", cfg.OUTPUT_DIR], stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([REPO] + sys.path)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockError, match=rf"pid {holder.pid}, started "):
            ClsTrainer(cfg, PatternDataset(16), PatternDataset(8, seed=1))
    finally:
        holder.kill()
        holder.wait()
    trainer = ClsTrainer(cfg, PatternDataset(16), PatternDataset(8, seed=1))  # stale: taken over
    assert os.path.exists(os.path.join(cfg.OUTPUT_DIR, LOCK_FILE))
    trainer.train()
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, LOCK_FILE))


def test_a_lock_of_another_host_is_refused_and_this_process_may_take_it_twice(tmp_path):
    path = str(tmp_path / LOCK_FILE)
    with open(path, "w") as f:
        json.dump({"host": "elsewhere", "pid": 1, "started": 0, "command": "x"}, f)
    with pytest.raises(RunLockError, match="in use by a run on another host"):
        acquire_run_lock(str(tmp_path))
    os.remove(path)
    assert acquire_run_lock(str(tmp_path)) == acquire_run_lock(str(tmp_path)) == path
    release_run_lock(path)
    assert os.path.exists(path)
    release_run_lock(path)
    assert not os.path.exists(path)
