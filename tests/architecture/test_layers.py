"""The architecture of DESIGN.md §1, checked on the source: no optimizer outside the trainer, no import
circle, no import from a lower floor to a higher one."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gendistill"

FLOORS = {
    # the package root: contracts and helpers every layer may use
    "errors": 0, "config": 0, "recipe": 0, "devices": 0, "compat": 0, "shipped": 0, "run_dir": 0, "__init__": 0,
    "diffusion": 1,
    "backends": 2, "train": 2,
    "render": 3,
    "domains": 4, "score": 4, "distill": 4, "convert": 4,
    "jobs": 6,
    "app": 7, "commands": 7, "pipelines": 7, "cli": 8, "__main__": 8,
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if (PACKAGE / "assets") in path.parents:  # model folders' pipeline.py: data that travels with a model
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(path: Path, name: str, is_package: bool) -> set[str]:
    """Every gendistill module ``path`` imports, at the top or inside functions (TYPE_CHECKING ones skipped)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gendistill"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("gendistill"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports_of(path, name, path.name == "__init__.py") if m in mods and m != name}
            for name, path in mods.items()}


def floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS[parts[1]] if len(parts) > 1 else 0


def test_every_top_level_module_has_a_floor():
    unknown = sorted({m.split(".")[1] for m in modules() if "." in m} - set(FLOORS))
    assert not unknown, f"give these a floor in FLOORS: {unknown}"


def test_no_import_runs_up_a_floor():
    upward = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets if floor(a) < floor(b))
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    edges = graph()
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    # a package's __init__ re-exporting its own submodules is not a circle between files of different floors
    real = [c for c in circles if not all(m.startswith(_common(c)) for m in c) or len({floor(m) for m in c}) > 1
            or not any(modules()[m].name == "__init__.py" for m in c)]
    assert not real, real


def _common(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    prefix = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        prefix.append(level[0])
    return ".".join(prefix)


def _optimizer_calls(tree: ast.AST) -> list[int]:
    """Lines that build a torch optimizer or call ``<something optimizer-like>.step()``."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        text = ast.unparse(node.func)
        if text.startswith("torch.optim.") and "lr_scheduler" not in text:
            lines.append(node.lineno)
        elif node.func.attr == "step" and not node.args and any(k in ast.unparse(node.func.value).lower()
                                                               for k in ("optim", "opt")):
            lines.append(node.lineno)
    return lines


def test_no_optimizer_outside_the_trainer():
    outside = {str(p.relative_to(PACKAGE)): lines for p in PACKAGE.rglob("*.py")
               if "train" not in p.relative_to(PACKAGE).parts[:1]
               and (lines := _optimizer_calls(ast.parse(p.read_text())))}
    assert not outside, outside


@pytest.mark.parametrize("source, expected", [("torch.optim.Adam(p)", 1), ("opt.step()", 1),
                                              ("scheduler.step(x)", 0), ("sampler.step()", 0)])
def test_the_optimizer_finder_finds_what_it_should(source, expected):
    assert len(_optimizer_calls(ast.parse(source))) == expected
