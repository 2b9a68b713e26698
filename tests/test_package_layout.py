"""The package layout: nst_det.losses needs torch alone; the packages of nst_det import each other
in one direction only, down the levels of ``LEVELS`` (losses, _d2_compat <- engine <- inception_bn
<- classification | detection, side by side <- convert <- research), so never in a cycle; the
classification stage loads no module of the detection stage; no library module imports a tool."""
import ast
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "nst_det")


def test_losses_import_without_detectron2():
    """In a fresh interpreter where ``import detectron2`` fails, ``nst_det.losses`` imports and
    computes; no Detectron2 (or fvcore) module is loaded."""
    code = (
        "import sys\n"
        "sys.modules['detectron2'] = None  # any import of it now raises ImportError\n"
        "sys.modules['fvcore'] = None\n"
        "import torch\n"
        "import nst_det.losses as L\n"
        "from nst_det import nst_loss\n"
        "x, y = torch.randn(2, 4, 3, 3), torch.randn(2, 8, 3, 3)\n"
        "assert torch.isfinite(L.nst_loss(x, y)) and torch.isfinite(nst_loss(x, y, kernel='linear'))\n"
        "loaded = [m for m in sys.modules if m.startswith(('detectron2', 'fvcore'))\n"
        "          and sys.modules[m] is not None]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n")
    proc = _run_fresh(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _run_fresh(code):
    """Run ``code`` in a fresh interpreter from an empty folder: the checkout's own folder (which
    may itself be named ``nst_det``) is then no namespace package that shadows the installed one."""
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                              text=True, timeout=300)


def _imports_of(path):
    """The nst_det sub-packages (first component after ``nst_det.``) imported by one file."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "nst_det" and len(parts) > 1:
                found.add(parts[1])
    return found


def _package_graph():
    """{package: set of packages it imports} for the packages and top-level modules of nst_det."""
    graph = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, PACKAGE).split(os.sep)
            if rel == ["__init__.py"]:
                continue
            package = rel[0][:-3] if len(rel) == 1 else rel[0]
            graph.setdefault(package, set()).update(_imports_of(path) - {package})
    return graph


# Each package (or top-level module) of nst_det with its level: a package imports only packages
# of a lower level, so the two stages (level 3) never import each other.
LEVELS = {"losses": 0, "_d2_compat": 0, "engine": 1, "inception_bn": 2, "classification": 3,
          "detection": 3, "convert": 4, "research": 5}


def upward_imports(graph):
    """[(importer, imported)] of every import that does not point to a lower level."""
    return sorted((p, q) for p, imported in graph.items() for q in imported
                  if LEVELS[q] >= LEVELS[p])


def test_every_package_has_a_level():
    assert set(_package_graph()) == set(LEVELS)


def test_imports_point_down_only():
    graph = _package_graph()
    assert graph["losses"] == set()  # pure torch: nothing else of nst_det
    assert upward_imports(graph) == []


def test_an_upward_import_is_caught():
    """The broken variant: the classification stage importing the detection stage (as its models
    once did for the Inception-BN trunk), and the engine importing a research driver."""
    graph = {p: set(q) for p, q in _package_graph().items()}
    graph["classification"].add("detection")
    graph["engine"].add("research")
    assert upward_imports(graph) == [("classification", "detection"), ("engine", "research")]


def test_classification_stage_loads_no_detection_module():
    """Importing every module of the classification stage and the converter, in a fresh
    interpreter, loads no module of nst_det.detection or nst_det.research."""
    code = (
        "import sys\n"
        "import nst_det.classification.trainer, nst_det.classification.config, nst_det.convert\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.startswith(('nst_det.detection', 'nst_det.research'))))\n")
    proc = _run_fresh(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_no_library_module_imports_a_tool():
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    source = f.read()
                assert "from tools" not in source and "import tools" not in source, name
