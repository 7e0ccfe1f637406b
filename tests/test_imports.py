"""The import graph follows the pipeline: no stage imports a later one, and no two modules import each other.

Read from the source (every `import`, module-level or inside a function), so it costs no imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kobert_pretrain"

# The stage of each module (a package's modules take the package's stage), in pipeline order. 0: what
# every stage uses; 1 prepare (the pipeline's stage 0), 2 vocab, 3 shards, 4 train (with its loader,
# model, checkpoints and supervisor), 5 convert, 6 finetune, 7 study (whole pipelines compared); 9: the entry
# points and tools that use all of them.
STAGES = {
    "errors": 0, "fsutil": 0, "text": 0, "config": 0, "distributed": 0, "plots": 0,
    "demo": 0,  # demo: the bundled corpus
    "prepare": 1,
    "vocab": 2,
    "masking": 3, "shards": 3,
    "data": 4, "model": 4, "optim": 4, "run_dir": 4, "metrics": 4, "train_state": 4, "checkpoint": 4,
    "train": 4, "launch": 4, "gpu": 4, "heartbeat": 4, "plan": 4, "preflight": 4, "dry_run": 4,
    "grad_norm": 4,
    "convert": 5,
    "finetune": 6,
    "study": 7,
    "__init__": 9, "__main__": 9, "cli": 9, "doctor": 9,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports(path: Path) -> set[str]:
    """The kobert_pretrain modules `path` imports (`from kobert_pretrain.x import y` names x.y if it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kobert_pretrain"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kobert_pretrain"):
            for a in node.names:
                candidate = f"{node.module}.{a.name}"
                is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).is_file()
                found.add(candidate if is_module else node.module)
    return found - {"kobert_pretrain"}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def stage(module: str) -> int:
    parts = module.split(".")
    return STAGES[parts[1] if len(parts) > 1 else "__init__"]


def test_every_module_has_a_stage():
    assert sorted(m for m in graph() if m.split(".")[1:2] and m.split(".")[1] not in STAGES) == []


def test_no_stage_imports_a_later_one():
    later = sorted(f"{m} -> {d}" for m, deps in graph().items() for d in deps if stage(d) > stage(m))
    assert later == []


def test_no_import_cycle():
    edges = graph()
    # a package's __init__ re-exports its modules; the cycle that matters is between modules
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in edges.items()}
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []
