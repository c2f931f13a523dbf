"""DESIGN.md §1: data flows down; no layer imports one above it."""

import ast
from pathlib import Path

import stepforge

# lower number = lower layer; modules of one rank may import each other
RANK = {
    "schema": 0, "segment": 0, "verify": 0, "jobs": 0, "formats": 0, "loaders": 0, "worlds": 1, "backends": 2,
    "tasks": 3, "sample": 3, "label": 4, "prm": 5, "search": 6, "train": 7, "eval": 8, "cli": 9,
}


def test_no_module_imports_a_higher_layer():
    root = Path(stepforge.__file__).parent
    problems = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        layer = rel.parts[0].removesuffix(".py")
        if layer == "__init__":
            continue
        assert layer in RANK, f"{rel}: layer {layer!r} has no rank in this test"
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stepforge."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("stepforge.")]
            for name in names:
                target = name.split(".")[1]
                if RANK[target] > RANK[layer]:
                    problems.append(f"{rel} imports {name} (layer {target} is above {layer})")
    assert not problems, "\n".join(problems)
