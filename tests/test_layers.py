"""The package's layers import downward only: cli -> pipeline -> engine / models / schedulers / checkpoints
-> ops -> kernels, _C. Checked on every import statement of every module, lazy ones inside functions too,
in fastddpm/ and in kernels/ (installed as fastddpm.kernels)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastddpm"
KERNELS = ROOT / "kernels"  # setup.py installs it as fastddpm.kernels

# Higher imports lower or equal; the four middle parts share a layer (a reader may build the network).
LAYER = {
    "kernels": 0,
    "_C": 0,
    "sampler_registry": 0,  # the sampler names: data, importing nothing
    "ops": 1,
    "engine": 2,
    "models": 2,
    "schedulers": 2,
    "checkpoints": 2,
    "pipeline": 3,
    "upsampling": 3,  # an upsampler's low_res input, checked for the pipeline (and the command line)
    "": 4,  # fastddpm/__init__.py, the public API: only the command line may go through it
    "cli": 4,
}


def part_of(module: str) -> str:
    """'fastddpm.ops.reference' -> 'ops'; 'fastddpm' -> ''."""
    parts = module.split(".")
    assert parts[0] == "fastddpm", module
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] == "kernels":
        parts.insert(0, "fastddpm")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, here: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) for every import of a fastddpm module in ``source``, the text of module ``here``."""
    package = here if is_package else here.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "fastddpm"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "fastddpm":
                continue
            for alias in node.names:  # `from fastddpm import ops` imports the module fastddpm.ops
                candidate = f"{source}.{alias.name}"
                is_module = source_path(candidate).is_dir() or source_path(candidate, ".py").is_file()
                found.append((node.lineno, candidate if is_module else source))
    return found


def source_path(module: str, suffix: str = "") -> Path:
    """Where module ``fastddpm.x.y`` lives in the checkout (fastddpm.kernels.* in kernels/)."""
    parts = module.split(".")
    if parts[:2] == ["fastddpm", "kernels"]:
        parts = parts[1:]
    return ROOT.joinpath(*parts).with_name(parts[-1] + suffix)


MODULES = sorted(PACKAGE.rglob("*.py")) + sorted(KERNELS.rglob("*.py"))


def test_the_kernels_are_checked_too():
    assert any(path.parent == KERNELS for path in MODULES)
    assert module_name(KERNELS / "sampler_step.py") == "fastddpm.kernels.sampler_step"
    assert imported_modules("from .step_columns import NOISE_ON\n", "fastddpm.kernels.sampler_step") == [
        (1, "fastddpm.kernels.step_columns")
    ]
    # the import that kernels/ had before: a kernel reading the layout from ops, one layer up
    found = imported_modules(
        "from fastddpm.ops.step_columns import NOISE_ON\n", "fastddpm.kernels.sampler_step"
    )
    assert LAYER[part_of(found[0][1])] > LAYER["kernels"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_downward(path):
    mine = part_of(module_name(path))
    for line, target in imported_modules(path.read_text(), module_name(path), path.name == "__init__.py"):
        theirs = part_of(target)
        assert LAYER[theirs] <= LAYER[mine], (
            f"{path.relative_to(ROOT)}:{line} imports {target}: {mine or 'fastddpm'} "
            f"(layer {LAYER[mine]}) must not import {theirs or 'fastddpm'} (layer {LAYER[theirs]})"
        )


def test_the_check_sees_upward_imports_in_every_spelling():
    # lazy, absolute, relative, and a module imported by name from its package
    source = "def f():\n    from fastddpm.pipeline import load\n    from .. import cli\n    import fastddpm.engine\n"
    found = imported_modules(source, "fastddpm.ops.probe")
    assert found == [(2, "fastddpm.pipeline"), (3, "fastddpm.cli"), (4, "fastddpm.engine")]
    assert [LAYER[part_of(m)] > LAYER["ops"] for _, m in found] == [True, True, True]
