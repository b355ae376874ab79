"""The house rules no linter checks: every docstring example runs, every package face is exactly what
it says, and no module reaches into another package past its face (import-linter checks the arrows
between packages, not which names cross them)."""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import watcher

ROOT = Path(watcher.__file__).parent
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(watcher.__path__, "watcher.")
    # the optional C extensions have no source; __main__ runs the command line when imported
    if info.name.rsplit(".", 1)[-1] not in ("_turnscan", "_otlpscan", "__main__")
)
PACKAGES = sorted(info.name for info in pkgutil.iter_modules(watcher.__path__, "watcher.") if info.ispkg)
# Imports past a face in the pure packages, which are being cleaned up with their types (issue #12;
# the mypy overrides in pyproject.toml list the same packages). Each entry goes when it is fixed; a
# new crossing fails.
PENDING = {
    ("watcher.judges.bluegreen", "watcher.stats", "latency_bins"),
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


def _with_examples() -> list[str]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [name for name in MODULES if any(t.examples for t in finder.find(_module(name), name))]


@pytest.mark.parametrize("name", _with_examples())
def test_docstring_examples_run(name: str) -> None:
    module = _module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
        runner.run(test, clear_globs=True)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples in {name} failed (output above)"
    )


def test_some_modules_have_examples() -> None:
    assert {"watcher.backoff", "watcher.config.validate", "watcher.contract"} <= set(_with_examples())


@pytest.mark.parametrize("name", [*PACKAGES, "watcher.backoff", "watcher.clock", "watcher.errors"])
def test_each_face_lists_exactly_public_names_that_exist(name: str) -> None:
    module = _module(name)
    face = getattr(module, "__all__", None)
    if name in PACKAGES:
        assert face is not None, f"{name} has no __all__: its face is not stated"
    if face is None:
        return
    assert len(face) == len(set(face)), f"{name}.__all__ lists a name twice"
    assert not [n for n in face if n.startswith("_")], f"{name}.__all__ lists private names"
    assert not [n for n in face if not hasattr(module, n)], f"{name}.__all__ lists names it does not have"
    if name in PACKAGES:  # a face shows the classes and functions its own modules define
        foreign = [
            n
            for n in face
            if (inspect.isclass(getattr(module, n)) or inspect.isfunction(getattr(module, n)))
            and not getattr(module, n).__module__.startswith(name)
        ]
        assert not foreign, f"{name} exposes classes or functions of other packages: {foreign}"


def _crossings() -> list[tuple[str, int, str, str]]:
    """(module, line, imported module, name) of every ``from watcher.<pkg>... import name`` whose
    package is not the importing module's own."""
    out = []
    for name in MODULES:
        path = ROOT.joinpath(*name.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        own = name.split(".")[1] if "." in name else ""
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("watcher"):
                target = node.module.split(".")
                if len(target) > 1 and target[1] != own:
                    out += [(name, node.lineno, node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "watcher" and len(parts) > 2 and parts[1] != own:
                        out.append((name, node.lineno, ".".join(parts[:-1]), parts[-1]))
    return out


def test_no_module_imports_past_another_packages_face() -> None:
    wrong = []
    for name, line, target, imported in _crossings():
        where = f"{name}:{line} imports {target}.{imported}"
        if imported.startswith("_"):
            wrong.append(f"{where}: a private name")
            continue
        face = getattr(_module(target), "__all__", None)
        top = target.count(".") == 1
        if not top:
            wrong.append(f"{where}: from a module inside the package, not its face")
        elif face is not None and imported not in face and (name, target, imported) not in PENDING:
            wrong.append(f"{where}: not in the face of {target}")
    assert not wrong, "\n".join(wrong)


def test_the_pending_crossings_still_exist() -> None:
    """An entry of PENDING that was fixed is removed from it, so it cannot come back unnoticed."""
    found = {(name, target, imported) for name, _, target, imported in _crossings()}
    assert not PENDING - found, f"fixed: remove from PENDING {sorted(PENDING - found)}"
