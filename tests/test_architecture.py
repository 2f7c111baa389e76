"""docs/architecture.md holds: the packages import each other one way only, datagen loads neither torch nor bpy,
and every function, class or module the document names exists. (Read from the sources, without importing torch.)"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("datagen", "blender_scenes", "training", "evaluation")
# what each package must never import, at module level or inside a function
FORBIDDEN = {
    "datagen": {"torch", "bpy", "blender_scenes", "training", "evaluation"},   # the CLI loads commands by name
    "blender_scenes": {"torch", "datagen", "training", "evaluation"},          # it is told everything by the spec
    "training": {"bpy", "blender_scenes", "evaluation"},
    "evaluation": {"bpy", "blender_scenes"},
}


def imported_packages(path: Path) -> dict[str, int]:
    """Top-level names a source file imports (any depth of the syntax tree) -> the first line doing so."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_each_other_one_way_only(package):
    bad = [f"{path.relative_to(REPO)}:{line} imports {name}"
           for path in sorted((REPO / package).rglob("*.py"))
           for name, line in imported_packages(path).items() if name in FORBIDDEN[package]]
    assert not bad, bad


def test_importing_every_datagen_module_loads_neither_torch_nor_bpy():
    code = ("import pkgutil, importlib, sys, datagen\n"
            "for m in pkgutil.iter_modules(datagen.__path__):\n"
            "    importlib.import_module('datagen.' + m.name)\n"
            "print(sorted(m for m in ('torch', 'bpy', 'training', 'evaluation', 'blender_scenes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _module_file(parts: list[str]) -> Path | None:
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defines(body: list[ast.stmt], name: str) -> ast.stmt | None:
    """The top-level def, class or assignment of `name` in a module or class body."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node
    return None


def exists(dotted: str) -> bool:
    """`package.module[.name[.attribute]]` names a module, or something defined at its top level (and in it)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        path = _module_file(parts[:cut])
        if path is None:
            continue
        body: list[ast.stmt] = ast.parse(path.read_text()).body
        for name in parts[cut:]:
            node = _defines(body, name)
            if node is None:
                return False
            body = getattr(node, "body", [])
        return True
    return False


def test_the_architecture_document_names_only_code_that_exists():
    text = (REPO / "docs" / "architecture.md").read_text()
    names = set(re.findall(rf"`((?:{'|'.join(PACKAGES)})(?:\.\w+)+)`", text))
    paths = set(re.findall(r"`((?:tests|docs|datagen|training|evaluation|blender_scenes)/[\w/.]+\.(?:py|md))`", text))
    assert len(names) > 40 and paths   # the document names its writers and readers
    assert not [n for n in sorted(names) if not exists(n)]
    assert not [p for p in sorted(paths) if not (REPO / p).is_file()]


def test_exists_finds_definitions_and_refuses_names_that_are_not_there():
    assert exists("datagen.render.WorkerPool.ready") and exists("datagen.render.READY_TIMEOUT_S")
    assert exists("blender_scenes.worker") and exists("training.loop.MetricsLog")
    assert not exists("datagen.render.WorkerPool.start_all") and not exists("datagen.trajectories.TrajectoryConfig")
    assert not exists("datagen.nonesuch.f")


def test_nothing_cites_a_design_document_outside_the_repository():
    needles = ("DESIGN" + ".md", "../" + "shared")
    skip = {".git", ".venv", ".venv-bench", "demo_out", "magvit3d.egg-info", "__pycache__", ".pytest_cache"}
    hits = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            path = Path(folder) / name
            if path.suffix in (".py", ".md", ".toml", ".txt", ".cfg", ".sh") or name == "Makefile":
                text = path.read_text(errors="replace")
                hits += [f"{path.relative_to(REPO)}: {n}" for n in needles if n in text]
    assert not hits, hits
