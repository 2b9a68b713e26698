"""The package layout: nst_det.losses needs torch alone; the packages of nst_det import each other
in one direction only (losses <- engine <- detection <- classification <- convert), never in a
cycle, and no library module imports a tool."""
import ast
import os
import subprocess
import sys

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
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(REPO),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


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


def test_packages_import_each_other_without_cycles():
    graph = _package_graph()
    assert graph["losses"] == set()  # pure torch: nothing else of nst_det
    assert "detection" not in graph["engine"] and "classification" not in graph["engine"]
    assert "classification" not in graph["detection"]

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, seen + (n,)))
                   for n in graph.get(start, ()))

    cycles = [p for p in graph if reaches(p, p)]
    assert not cycles, {p: sorted(graph[p]) for p in cycles}


def test_no_library_module_imports_a_tool():
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    source = f.read()
                assert "from tools" not in source and "import tools" not in source, name
