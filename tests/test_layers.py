"""DESIGN.md §1: data flows down; no layer imports one above it; worlds are reached only through
the Task seam (stepforge.tasks), never imported by another layer."""

import ast
from pathlib import Path

import stepforge

# lower number = lower layer; modules of one rank may import each other. tasks.py (the seam) sits
# below worlds/, which register themselves with it.
RANK = {
    "schema": 0, "segment": 0, "verify": 0, "jobs": 0, "formats": 0, "loaders": 0, "seeds": 0, "runs": 0,
    "guards": 0, "alignment": 0, "tasks": 1, "worlds": 2, "backends": 3, "sample": 4, "env": 4, "label": 5, "data": 7,
    "prm": 6, "search": 7, "train": 8, "eval": 9, "cli": 10,
}


def _imports(root: Path):
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        layer = rel.parts[0].removesuffix(".py")
        if layer == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stepforge."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("stepforge.")]
            for name in names:
                yield rel, layer, name


def test_no_module_imports_a_higher_layer():
    root = Path(stepforge.__file__).parent
    problems = []
    for rel, layer, name in _imports(root):
        assert layer in RANK, f"{rel}: layer {layer!r} has no rank in this test"
        target = name.split(".")[1]
        if RANK[target] > RANK[layer]:
            problems.append(f"{rel} imports {name} (layer {target} is above {layer})")
    assert not problems, "\n".join(problems)


def test_no_module_outside_worlds_imports_a_world():
    root = Path(stepforge.__file__).parent
    leaks = [f"{rel} imports {name}" for rel, layer, name in _imports(root)
             if name.startswith("stepforge.worlds") and layer != "worlds"]
    assert not leaks, "\n".join(leaks)
