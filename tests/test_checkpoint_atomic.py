"""Tests of nst_det/engine/atomic.py and detection_checkpointer.py: a checkpoint is never
half-written, last_checkpoint names only complete files, an unreadable or missing file is an error
naming it, and --resume falls back to the newest complete checkpoint, saying so."""
import logging
import os

import pytest
import torch
from torch import nn

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from nst_det.engine.atomic import (
    UnreadableCheckpointError,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
)
from nst_det.engine.checkpointer import AtomicCheckpointer


class _Counter:
    """A checkpointable with one number (stands in for the trainer's iteration)."""

    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def _checkpointer(folder, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    counter = _Counter()
    return AtomicCheckpointer(model, str(folder), save_to_disk=True, counter=counter), \
        model, counter


def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def _files(folder):
    return sorted(os.listdir(folder))


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = str(tmp_path / "x.pth")
    atomic_save({"model": {"w": torch.ones(2)}}, path)
    before = open(path, "rb").read()
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"model": {"w": torch.zeros(2)}, "bad": _Unpicklable()}, path)
    assert open(path, "rb").read() == before
    assert _files(tmp_path) == ["x.pth"]
    atomic_write_text("abc", str(tmp_path / "t"))
    assert open(tmp_path / "t").read() == "abc"


def test_save_writes_the_checkpoint_then_tags_it_with_no_leftovers(tmp_path):
    ckpt, model, counter = _checkpointer(tmp_path)
    counter.value = 7
    ckpt.save("model_0000003", iteration=3)
    assert _files(tmp_path) == ["last_checkpoint", "model_0000003.pth"]
    assert open(tmp_path / "last_checkpoint").read() == "model_0000003.pth"
    data = torch.load(tmp_path / "model_0000003.pth", weights_only=False)
    assert data["iteration"] == 3 and data["counter"] == {"value": 7}
    assert torch.equal(data["model"]["weight"], model.weight.detach())


def test_a_save_killed_while_writing_leaves_the_previous_checkpoint_tagged(tmp_path, monkeypatch):
    ckpt, _, _ = _checkpointer(tmp_path)
    ckpt.save("model_0000003")
    good = open(tmp_path / "model_0000003.pth", "rb").read()

    def half_written(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process dies in the middle of the write

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000007")
    assert _files(tmp_path) == ["last_checkpoint", "model_0000003.pth"]
    assert open(tmp_path / "last_checkpoint").read() == "model_0000003.pth"
    assert open(tmp_path / "model_0000003.pth", "rb").read() == good


def test_truncated_model_weights_is_an_error_naming_the_file(tmp_path):
    ckpt, _, _ = _checkpointer(tmp_path / "a")
    ckpt.save("model_final")
    path = str(tmp_path / "a" / "model_final.pth")
    _truncate(path)
    other, _, _ = _checkpointer(tmp_path / "b")
    with pytest.raises(UnreadableCheckpointError,
                       match=r"MODEL.WEIGHTS: checkpoint file '.*model_final.pth' is truncated"):
        other.resume_or_load(path, resume=False)
    with pytest.raises(UnreadableCheckpointError, match="model_final.pth' is truncated"):
        load_checkpoint(path)


def test_missing_model_weights_is_an_error_naming_the_file(tmp_path):
    ckpt, _, _ = _checkpointer(tmp_path)
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=r"MODEL.WEIGHTS: checkpoint file '.*nope.pth' "
                                                r"does not exist"):
        ckpt.resume_or_load(missing, resume=False)
    # no checkpoint in OUTPUT_DIR: --resume starts from MODEL.WEIGHTS, so the same error
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ckpt.resume_or_load(missing, resume=True)


def test_resume_falls_back_to_the_newest_complete_checkpoint_saying_so(tmp_path, caplog):
    ckpt, model, counter = _checkpointer(tmp_path)
    for iteration in (3, 7, 11):
        counter.value = iteration
        with torch.no_grad():
            model.weight.fill_(iteration)
        ckpt.save(f"model_{iteration:07d}")
    _truncate(str(tmp_path / "model_0000011.pth"))
    fresh, fresh_model, fresh_counter = _checkpointer(tmp_path, seed=1)
    assert fresh.has_checkpoint()
    with caplog.at_level(logging.WARNING):
        fresh.resume_or_load("", resume=True)
    assert fresh_counter.value == 7
    assert torch.all(fresh_model.weight == 7)
    assert "model_0000011.pth' is truncated" in caplog.text
    assert "falling back to the newest complete checkpoint" in caplog.text
    assert "model_0000007.pth" in caplog.text


def test_resume_with_no_readable_checkpoint_is_an_error_naming_them(tmp_path):
    ckpt, _, _ = _checkpointer(tmp_path)
    ckpt.save("model_0000003")
    _truncate(str(tmp_path / "model_0000003.pth"), keep=0.2)
    with pytest.raises(UnreadableCheckpointError, match="no readable checkpoint.*model_0000003.pth"):
        _checkpointer(tmp_path)[0].resume_or_load("", resume=True)


def test_resume_candidates_are_newest_first(tmp_path):
    ckpt, _, _ = _checkpointer(tmp_path)
    for name in ("model_0000099", "model_0000009", "model_final", "model_0000199"):
        ckpt.save(name)
    ckpt.tag_last_checkpoint("model_0000009.pth")  # a tag that names an older file wins
    names = [os.path.basename(p) for p in ckpt.resume_candidates()]
    assert names == ["model_0000009.pth", "model_final.pth", "model_0000199.pth",
                     "model_0000099.pth"]


def test_not_rank_zero_writes_nothing(tmp_path):
    model = nn.Linear(3, 2)
    AtomicCheckpointer(model, str(tmp_path), save_to_disk=False).save("model_final")
    assert _files(tmp_path) == []


def test_resume_candidates_are_the_trainer_checkpoints_only(tmp_path):
    ckpt, _, _ = _checkpointer(tmp_path)
    ckpt.save("model_0000005")
    for name in ("teacher.pth", "model_best.pth", ".model_0000009.pth.x1.tmp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "model_0000009.pth").mkdir()  # a folder, not a checkpoint
    atomic_write_text("", str(tmp_path / "last_checkpoint"))  # an empty tag names nothing
    assert [os.path.basename(p) for p in ckpt.resume_candidates()] == ["model_0000005.pth"]
    assert _checkpointer(tmp_path / "not_yet_created")[0].resume_candidates() == []


def test_resume_falls_back_also_where_a_failed_load_leaves_detectron2_mains_state(tmp_path,
                                                                                monkeypatch):
    """Detectron2's main asserts in DetectionCheckpointer.load that no load is under way
    (``_parsed_url_during_load`` is None), sets it, and clears it only after a successful load:
    after the newest checkpoint fails to load, the same checkpointer loads the one before."""
    from urllib.parse import urlparse

    from detectron2.checkpoint import DetectionCheckpointer
    from fvcore.common.checkpoint import Checkpointer

    def load_as_on_main(self, path, *args, **kwargs):
        assert getattr(self, "_parsed_url_during_load", None) is None
        self._parsed_url_during_load = urlparse(path)
        loaded = Checkpointer.load(self, path, *args, **kwargs)
        self._parsed_url_during_load = None
        return loaded

    monkeypatch.setattr(DetectionCheckpointer, "load", load_as_on_main)
    ckpt, _, counter = _checkpointer(tmp_path)
    for iteration in (3, 7):
        counter.value = iteration
        ckpt.save(f"model_{iteration:07d}")
    _truncate(str(tmp_path / "model_0000007.pth"))
    fresh, _, fresh_counter = _checkpointer(tmp_path, seed=1)
    fresh.resume_or_load("", resume=True)
    assert fresh_counter.value == 3
    assert fresh._parsed_url_during_load is None
