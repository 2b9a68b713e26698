"""tools/export_student.py and nst_det.detection.export: a distilled student, trained for two
iterations by tools/train_net.py from a folder outside the repository, exported by the documented
command (docs/DETECTION.md, "Deploying the distilled student") to TorchScript, and the saved model
run on the test images: its boxes, scores and classes must be those of the plain student in
PyTorch. Detectron2 v0.6 cannot export (its ``detectron2.export`` imports caffe2): there the tool
must refuse, saying that export needs Detectron2's main. Weights that do not fully fit the plain
student are refused, naming the file and the keys (on both Detectron2s)."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import GeneralizedRCNN, build_model
from nst_det.detection.export import (
    build_plain_student,
    export_torchscript,
    flattened_outputs,
    sample_inputs,
)
from nst_det.detection.load_config import load_nst_cfg, student_cfg
from nst_det.engine.checkpointer import WeightsMismatchError
from nst_det.research.demo_data import generate_demo_data

from distill_testing import save_random_teacher

try:  # Detectron2's main; v0.6's export package imports caffe2, which torch no longer ships
    from detectron2.export import TracingAdapter
except ImportError:
    TracingAdapter = None
try:
    import onnx
except ImportError:
    onnx = None
try:
    import onnxruntime
except ImportError:
    onnxruntime = None

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "DETECTION.md")
SECTION = "## Deploying the distilled student"
DEMO = os.path.join(REPO, "configs", "demo")
needs_export = pytest.mark.skipif(TracingAdapter is None,
                                  reason="this Detectron2 cannot import detectron2.export (v0.6)")
# Tiny 64 x 80 images; every box kept (an untrained student scores low) so there is much to compare.
TEST_SIZE = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "80",
             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
TRAIN = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "80",
         "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "30",
         "DATASETS.TRAIN", "('nst_demo_voc_train',)", "DATASETS.TEST", "()",
         "DATALOADER.NUM_WORKERS", "0"]


def documented_commands():
    """The command lines of the docs' section on deploying, as tokens."""
    text = open(DOC, encoding="utf-8").read()
    section = text[text.index(SECTION):]
    end = section.find("\n## ", len(SECTION))
    section = section if end < 0 else section[:end]
    bash = "\n".join(re.findall(r"```bash\n(.*?)```", section, re.S)).replace("\\\n", " ")
    return [c for c in (shlex.split(line, comments=True) for line in bash.splitlines()) if c]


def python_tool(work, env, tokens, *extra):
    """``python tools/X.py ...`` from ``work`` with this interpreter, stdout and stderr merged."""
    argv = [sys.executable, os.path.join(REPO, tokens[1]), *tokens[2:], *map(str, extra)]
    return subprocess.run(argv, cwd=str(work), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=500)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A user's folder outside the repository: tiny demo data (datasets/demo_det), a random
    teacher, and the NST student distilled from it by tools/train_net.py (2 iterations) into the
    config's OUTPUT_DIR, output/demo_det/student_nst."""
    root = tmp_path_factory.mktemp("user")
    generate_demo_data(str(root / "datasets" / "demo_det"), num_train=4, num_val=0, num_test=3,
                       seed=3, height=64, width=80)
    teacher = save_random_teacher(os.path.join(DEMO, "det_teacher.yaml"), str(root / "teacher.pth"))
    env = dict(os.environ, DETECTRON2_DATASETS=str(root / "datasets"), OMP_NUM_THREADS="1")
    proc = python_tool(root, env, ["python", "tools/train_net.py", "--config-file",
                                   os.path.join(DEMO, "det_student_nst.yaml")],
                       *TRAIN, "DISTILL.TEACHER.WEIGHTS", teacher)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "loss_nst" in proc.stdout
    return dict(root=root, env=env, checkpoint=root / "output/demo_det/student_nst/model_final.pth")


@pytest.fixture(scope="module")
def exported(work):
    """The documented export command, run word for word (plus the tiny test size)."""
    export = next(c for c in documented_commands() if c[1] == "tools/export_student.py")
    tokens = [os.path.join(REPO, t) if t.startswith("configs/") else t for t in export]
    out = tokens[tokens.index("--output") + 1]
    assert tokens[tokens.index("MODEL.WEIGHTS") + 1] == "output/demo_det/student_nst/model_final.pth"
    proc = python_tool(work["root"], work["env"], tokens, *TEST_SIZE)
    return dict(work, proc=proc, out=work["root"] / out,
                config=tokens[tokens.index("--config-file") + 1])


def test_the_distilled_checkpoint_holds_the_student_only(work):
    saved = torch.load(str(work["checkpoint"]), map_location="cpu", weights_only=False)["model"]
    cfg = load_nst_cfg(os.path.join(DEMO, "det_student_nst.yaml"), ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.META_ARCHITECTURE == "DistillGeneralizedRCNN"
    assert set(saved) == set(build_model(student_cfg(cfg)).state_dict())


@pytest.mark.skipif(TracingAdapter is not None, reason="this Detectron2 exports")
def test_detectron2_v06_is_refused_saying_export_needs_main(exported):
    proc = exported["proc"]
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "exporting needs Detectron2's main branch" in proc.stdout
    assert "caffe2" in proc.stdout and "Traceback" not in proc.stdout
    assert not (exported["out"] / "model.ts").exists()


def _plain_student(cfg_file, weights, opts=()):
    """The plain student in PyTorch, built and loaded here with Detectron2's own checkpointer."""
    cfg = load_nst_cfg(cfg_file, ["MODEL.DEVICE", "cpu", *opts])
    model = build_model(student_cfg(cfg))
    DetectionCheckpointer(model).load(str(weights))
    return model.eval(), cfg


def _pytorch_instances(model, image):
    with torch.no_grad():
        if isinstance(model, GeneralizedRCNN):  # what the export traces: before the final resize
            return model.inference([{"image": image}], do_postprocess=False)[0]
        return model([{"image": image}])[0]["instances"]


def _compare(ts_model, model, images):
    """The saved model's flattened outputs, rebuilt by the adapter's schema, against the PyTorch
    student's instances on each image; the number of boxes compared."""
    adapter = TracingAdapter(model, [{"image": images[0]}],
                             (lambda m, x: [{"instances": _pytorch_instances(m, x[0]["image"])}]))
    adapter(images[0])  # records the outputs' schema
    compared = 0
    for image in images:
        expected = _pytorch_instances(model, image)
        with torch.no_grad():
            flat = ts_model(image)
        assert all(isinstance(t, torch.Tensor) for t in flat) and len(flat) == 4
        got = adapter.outputs_schema(flat)[0]["instances"]
        assert set(got.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert tuple(int(s) for s in got.image_size) == tuple(image.shape[-2:])
        assert len(got) == len(expected)
        assert torch.allclose(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-4, rtol=1e-5)
        assert torch.allclose(got.scores, expected.scores, atol=1e-5, rtol=1e-5)
        assert torch.equal(got.pred_classes, expected.pred_classes)
        compared += len(expected)
    return compared


def _test_images(root, cfg):
    """The demo's test images, as the exported model takes them (float32, resized for testing)."""
    files = sorted(glob.glob(str(root / "datasets/demo_det/JPEGImages/*.jpg")))
    test_ids = open(root / "datasets/demo_det/ImageSets/Main/test.txt").read().split()
    images = [sample_inputs(cfg, f)[0]["image"] for f in files
              if os.path.basename(f)[:-4] in test_ids]
    assert len(images) == 3 and all(i.shape == (3, 64, 80) for i in images)
    return images


@needs_export
def test_the_exported_torchscript_predicts_as_the_pytorch_student(exported):
    proc = exported["proc"]
    assert proc.returncode == 0, proc.stdout[-5000:]
    path = exported["out"] / "model.ts"
    assert f"Exported the GeneralizedRCNN student of" in proc.stdout and path.is_file()
    ts_model = torch.jit.load(str(path))
    model, cfg = _plain_student(exported["config"], exported["checkpoint"], TEST_SIZE)
    assert _compare(ts_model, model, _test_images(exported["root"], cfg)) > 0


def _corrupt(checkpoint, folder, drop=(), add=()):
    data = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    for key in drop:
        del data["model"][key]
    for key in add:
        data["model"][key] = torch.zeros(3)
    path = os.path.join(str(folder), "broken.pth")
    torch.save(data, path)
    return path


MISSING = "roi_heads.box_predictor.cls_score.weight"


def test_a_checkpoint_missing_a_tensor_is_refused_naming_the_file_and_key(work, tmp_path):
    path = _corrupt(work["checkpoint"], tmp_path, drop=[MISSING], add=["teacher.stem.weight"])
    cfg = load_nst_cfg(os.path.join(DEMO, "det_student_nst.yaml"), ["MODEL.DEVICE", "cpu"])
    with pytest.raises(WeightsMismatchError) as e:
        build_plain_student(cfg, path)
    message = str(e.value)
    assert path in message and f"missing keys 1: {MISSING}" in message
    assert "unexpected keys 1: teacher.stem.weight" in message
    assert "GeneralizedRCNN" in message


@needs_export
def test_the_tool_refuses_a_checkpoint_missing_a_tensor(work, tmp_path):
    path = _corrupt(work["checkpoint"], tmp_path, drop=[MISSING])
    proc = python_tool(work["root"], work["env"], [
        "python", "tools/export_student.py", "--config-file",
        os.path.join(DEMO, "det_student_nst.yaml"), "MODEL.WEIGHTS", path, "--output",
        str(tmp_path / "out")], *TEST_SIZE)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert re.search(rf"error: student weights file '{re.escape(path)}' .*missing keys 1: "
                     rf"{MISSING}", proc.stdout), proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout and not (tmp_path / "out" / "model.ts").exists()


@needs_export
def test_onnx_export_writes_a_valid_model_or_says_why_not(exported, tmp_path):
    proc = python_tool(exported["root"], exported["env"], [
        "python", "tools/export_student.py", "--config-file", exported["config"],
        "MODEL.WEIGHTS", str(exported["checkpoint"]), "--output", str(tmp_path), "--format",
        "onnx"], *TEST_SIZE)
    if onnx is None:
        assert proc.returncode == 1, proc.stdout[-3000:]
        assert "ONNX export needs the package 'onnx'" in proc.stdout
        assert not (tmp_path / "model.onnx").exists()
        return
    assert proc.returncode == 0, proc.stdout[-5000:]
    onnx.checker.check_model(onnx.load(str(tmp_path / "model.onnx")))
    if onnxruntime is None:
        return
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    model, cfg = _plain_student(exported["config"], exported["checkpoint"], TEST_SIZE)
    compared = 0
    for image in _test_images(exported["root"], cfg):
        expected, _ = flattened_outputs(model, image)
        got = session.run(None, {session.get_inputs()[0].name: image.numpy()})
        assert [tuple(g.shape) for g in got] == [tuple(e.shape) for e in expected]
        for e, g in zip(expected, got):
            assert torch.allclose(torch.from_numpy(g).to(e.dtype), e, atol=1e-4, rtol=1e-5)
        compared += len(expected[0])
    assert compared > 0


@needs_export
@pytest.mark.parametrize("config, arch", [("voc_retinanet_R18_nst.yaml", "RetinaNet"),
                                          ("coco_fcos_R18_nst.yaml", "YamlFCOS")])
def test_one_stage_students_export_and_predict_as_in_pytorch(config, arch, tmp_path):
    """RetinaNet and FCOS students of the shipped distillation configs (random weights, saved as
    a checkpoint), exported in-process at a tiny size."""
    opts = ["MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "80", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
            "MODEL.FCOS.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "50",
            "MODEL.FCOS.TOPK_CANDIDATES_TEST", "50", "TEST.DETECTIONS_PER_IMAGE", "20"]
    config = os.path.join(REPO, "configs", config)
    torch.manual_seed(0)
    cfg = load_nst_cfg(config, ["MODEL.DEVICE", "cpu", *opts])
    weights = str(tmp_path / "student.pth")
    torch.save({"model": build_model(student_cfg(cfg)).state_dict()}, weights)
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 64, 80), generator=g).float() for _ in range(2)]
    model = build_plain_student(cfg, weights)
    assert type(model).__name__ == arch
    export_torchscript(model, [{"image": images[0]}], str(tmp_path / "model.ts"))
    ts_model = torch.jit.load(str(tmp_path / "model.ts"))
    plain, _ = _plain_student(config, weights, opts)
    assert _compare(ts_model, plain, images) > 0
