"""The import rules of docs/architecture.md, read from its table, checked on every module."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dualprompt"
DOC = ROOT / "docs" / "architecture.md"
STACK = {"lightning", "pytorch_lightning", "hydra", "omegaconf", "torchmetrics", "wandb",
         "matplotlib", "tqdm"}
ENTRY = {"train", "evaluate", "embed", "check_data"}
OPEN_CLIP_INTERNALS_ALLOWED = {"dualprompt.towers", "dualprompt.loading"}  # and submodules
INTERNALS = {"open_clip", "timm"}  # open_clip's towers are timm's in SigLIP, EVA, PE


def allowed_layers() -> dict[str, set[str]]:
    """layer -> the layers it may import, from the doc's table."""
    rules = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"[a-z]+", cells[0]) and cells[0] != "layer":
            rules[cells[0]] = {x.strip() for x in cells[2].split(",")}
    return rules


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ("data", "world", "training", "cli"):
        return parts[1]
    if len(parts) >= 2 and parts[1] == "conf":
        return "cli"
    if len(parts) == 2 and parts[1] in ENTRY:
        return "entry"
    return "core"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the file, function-level included;
    `from pkg import name` counts as `pkg.name` when that is a module of dualprompt."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if is_module(sub) else target, node.lineno))
    return found


def is_module(name: str) -> bool:
    if not name.startswith("dualprompt"):
        return False
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_doc_names_every_layer():
    assert set(allowed_layers()) == {"core", "data", "world", "training", "cli", "entry"}


def violations(name: str, found: list[tuple[str, int]]) -> list[str]:
    """What module `name`, importing `found` ((module, line) pairs), breaks of the rules."""
    rules, layer, out = allowed_layers(), layer_of(name), []
    for target, line in found:
        where = f"{name}:{line} imports {target}"
        top = target.split(".")[0]
        if top == "dualprompt" and target != "dualprompt" and layer_of(target) not in rules[layer]:
            out.append(f"{where} ({layer} -> {layer_of(target)})")
        if top in STACK and layer not in ("training", "cli"):
            out.append(f"{where}: the training stack in {layer}")
        if (top in INTERNALS and target != "open_clip"
                and not any(name == m or name.startswith(m + ".")
                            for m in OPEN_CLIP_INTERNALS_ALLOWED)):
            out.append(f"{where}: open_clip / timm internals")
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_follow_the_layers(path):
    assert violations(module_name(path), imports(path)) == []


def test_there_are_no_import_circles():
    graph = {module_name(p): {t for t, _ in imports(p) if is_module(t)} for p in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt == "dualprompt":  # a package's own __init__
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):]
                                                                     + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_checker_sees_each_kind_of_forbidden_import():
    """The rules are not vacuous: a core module reaching up a layer, into the training stack
    or below open_clip's API is caught; the same imports from allowed places are not."""
    found = [("dualprompt.training.module", 1), ("lightning", 2), ("open_clip.model", 3),
             ("dualprompt.towers", 4), ("open_clip", 5)]
    assert len(violations("dualprompt.model", found)) == 3
    assert violations("dualprompt.cli.train", found[:2]) == []
    assert violations("dualprompt.towers", found[2:]) == []
    assert "dualprompt.training.methods" in dict(imports(PACKAGE / "cli" / "train.py"))
