"""Shared fixtures: ``official_datasets`` (tiny VOC2007, VOC2012, COCO and ImageNet sets in their
official layouts, written once per session) and ``official_env`` (an environment for subprocesses
that points Detectron2 and nst_det at them).

Detectron2 reads ``$DETECTRON2_DATASETS`` once, when ``detectron2.data`` is first imported, to
register its built-in sets: a test that loads ``voc_2007_trainval`` from these files runs a
subprocess with ``env=official_env``. nst_det is imported here only inside the fixtures, so that
collecting the tests imports nothing of Detectron2.
"""
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict

import pytest


@dataclass(frozen=True)
class OfficialDatasets:
    """Where ``official_datasets`` wrote its sets and how many images each split has."""

    root: str  # what DETECTRON2_DATASETS and NST_DATASETS name
    voc2007: str  # root/VOC2007
    voc2012: str  # root/VOC2012
    coco: str  # root/coco
    imagenet: str  # root/imagenet
    voc2007_splits: Dict[str, int] = field(default_factory=dict)  # {"trainval": n, "test": m}
    voc2012_splits: Dict[str, int] = field(default_factory=dict)
    coco_splits: Dict[str, int] = field(default_factory=dict)  # {"train2017": n, "val2017": m}
    imagenet_classes: tuple = ()
    imagenet_per_class: Dict[str, int] = field(default_factory=dict)  # {"train": n, "val": m}


SESSION_FOLDER = "official_datasets"  # the one temporary folder kept for the whole session


@pytest.fixture(scope="module", autouse=True)
def module_folders_removed(request, tmp_path_factory):
    """The temporary folders a test module made (its runs' checkpoints: hundreds of MiB each) are
    removed when the module ends, unless one of its tests failed: the suite's disk use stays that
    of its largest module, not the sum of all of them."""
    base = tmp_path_factory.getbasetemp()
    before = set(os.listdir(base))
    yield
    if getattr(request.module, "_failed_tests", 0):
        return
    for name in set(os.listdir(base)) - before - {SESSION_FOLDER}:
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and item.module is not None:
        item.module._failed_tests = getattr(item.module, "_failed_tests", 0) + 1
    return report


@pytest.fixture(scope="session")
def official_datasets(tmp_path_factory) -> OfficialDatasets:
    """Tiny sets (96 x 128 detection images, 64 x 64 ImageNet images) in the official layouts
    of :mod:`nst_det.research.official_layout`, under one session temporary directory."""
    from nst_det.research.official_layout import IMAGENET_CLASSES, write_coco, write_imagenet, write_voc

    root = str(tmp_path_factory.mktemp(SESSION_FOLDER, numbered=False))
    voc2007, voc2012 = {"trainval": 5, "test": 3}, {"trainval": 4}
    coco = {"train2017": 4, "val2017": 3}
    per_class = {"train": 3, "val": 2}
    return OfficialDatasets(
        root=root,
        voc2007=write_voc(root, 2007, voc2007, seed=0),
        voc2012=write_voc(root, 2012, voc2012, seed=0),
        coco=write_coco(root, coco, seed=0),
        imagenet=write_imagenet(root, IMAGENET_CLASSES, per_class["train"], per_class["val"],
                                size=64, seed=0),
        voc2007_splits=voc2007, voc2012_splits=voc2012, coco_splits=coco,
        imagenet_classes=tuple(IMAGENET_CLASSES), imagenet_per_class=per_class,
    )


@pytest.fixture(scope="session")
def official_env(official_datasets) -> Dict[str, str]:
    """``os.environ`` with ``DETECTRON2_DATASETS`` and ``NST_DATASETS`` set to the root of
    ``official_datasets``: pass it as ``env=`` to a subprocess."""
    return dict(os.environ, DETECTRON2_DATASETS=official_datasets.root,
                NST_DATASETS=official_datasets.root)


# The end-to-end tests of the tools (tools/*.py run as subprocesses), of the Detectron2
# compatibility layer and of the package layout: .ci/run runs them (``pytest -m d2_tools``) on
# Detectron2 main as well as on the default set-up's v0.6.
D2_TOOLS_TEST_FILES = frozenset({
    "test_docs_commands.py",       # the commands the docs show
    "test_resume_sigkill.py",      # --resume after SIGKILL
    "test_checkpoint_atomic.py",   # checkpoints never half-written; resume falls back past a bad one
    "test_ddp_tools.py",           # --num-gpus N on the CPU (gloo)
    "test_ddp_distill.py",
    "test_classification_ddp.py",
    "test_research_official_layout.py",  # the built-in VOC / COCO / ImageNet sets, official layouts
    "test_detector_pairs.py",      # teacher / student detector pairs
    "test_custom_datasets.py",     # data sets of one's own
    "test_train_net.py",           # tools/train_net.py
    "test_train_cls_tool.py",      # tools/train_cls.py
    "test_d2_compat.py",           # nst_det/_d2_compat.py
    "test_package_layout.py",
    "test_lazyconfig_train_net.py",  # tools/lazyconfig_train_net.py
    "test_transformer_teachers.py",  # ViTDet / MViTv2 teachers (LazyConfig files of main)
    "test_export_student.py",        # tools/export_student.py
    "test_refused_before_work.py",   # bad configs, launch options, class lists, unloaded weights
    "test_resume_teacher.py",        # --resume knows its teacher
    "test_outputs_atomic.py",        # evaluation outputs written atomically
    "test_run_lock.py",              # one run per OUTPUT_DIR
    "test_model_zoo_teacher.py",     # zoo:// teachers and model-zoo .pkl files
    "test_predictions_eval.py",      # tools/eval_predictions.py
    "test_detection_precision.py",   # the teacher's precision, the student's AMP on the CPU
})


def pytest_collection_modifyitems(config, items):
    marker = pytest.mark.d2_tools
    for item in items:
        if item.path.name in D2_TOOLS_TEST_FILES:
            item.add_marker(marker)
