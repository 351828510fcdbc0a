"""The package as a whole: it imports without GPU libraries, its modules sit in layers with no import
loops, heavy packages load lazily, every command has one entry-point layout, and tests mirror the code.

The layer table below is the one docs/ARCHITECTURE.md shows ("Layers"): a module may import modules of
its own layer or of a lower one, never of a higher one. A new module must be given a layer here.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

from sparse_deploy.lazy import HEAVY

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "sparse_deploy"
TESTS = REPO / "tests"

#: Layers, lowest first: (name, module patterns). docs/ARCHITECTURE.md shows the same table.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        ("errors", "lazy", "settings", "provenance", "cliargs", "guards", "statefile", "timing", "limits", "outputs"),
    ),
    (
        "model",
        (
            "presets",
            "masks",
            "modes",
            "schedule",
            "sources",
            "models",
            "macs",
            "sparsify",
            "checkpoint",
            "inputs",
            "data",
            "latency",
            "contract",
            "precision",
            "onnx_files",
            "artifacts",
            "sampling",
        ),
    ),
    ("runtime", ("backends", "backends.*")),
    ("stages", ("learn", "learn.*", "export", "export.*", "build", "trt_log", "run", "fid", "fid.*")),
    (
        "measure, serve",
        ("measure", "measure.*", "summary", "shipped", "triton", "triton.*", "client", "gpu_check", "gpu_check.*"),
    ),
    ("api", ("api",)),
    ("commands", ("train", "bench", "cli", "__main__")),
]
#: Modules that may declare lazy imports of the rest of sparse_deploy (and of torch): the GPU kit's parent process
#: runs before anything but the standard library is known to be installed.
LAZY_PACKAGE_IMPORTERS = ("gpu_check", "gpu_check.*")
#: The commands (python -m sparse_deploy.<name>; "" is python -m sparse_deploy, the sparse-deploy command) and the
#: file each runs.
ENTRY_POINTS = {
    "": "__main__.py",
    "cli": "cli.py",
    "train": "train.py",
    "build": "build.py",
    "run": "run.py",
    "summary": "summary.py",
    "shipped": "shipped.py",
    "client": "client.py",
    "bench": "bench.py",
    "fid": "fid/__main__.py",
    "export": "export/__main__.py",
    "gpu_check": "gpu_check/__main__.py",
    "triton": "triton/__main__.py",
    "triton.server": "triton/server.py",
}
#: tests/unit files that mirror no single module, and why.
UNMIRRORED_TESTS = {"test_package.py": "the package as a whole (sparse_deploy/__init__.py and every module's imports)"}


def _name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _short(module: str) -> str:
    return module.removeprefix("sparse_deploy.").removeprefix("sparse_deploy")


def _resolve(module: str, target: str) -> str:
    """The deepest module of the package that ``target`` names (a package attribute names its package)."""
    while target not in modules() and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module if modules()[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        base = base.rsplit(".", 1)[0]
    return f"{base}.{node.module}" if node.module else base


@cache
def imports() -> list[tuple[str, str, bool, int]]:
    """Every import of every module: ``(module, imported, inside a function, line)``; lazy_import calls count too."""
    found = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text())

        def visit(node: ast.AST, in_function: bool, module=module) -> None:
            for child in ast.iter_child_nodes(node):
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, ast.Import):
                    found.extend((module, alias.name, in_function, child.lineno) for alias in child.names)
                elif isinstance(child, ast.ImportFrom):
                    base = _absolute(module, child)
                    for alias in child.names:
                        full = f"{base}.{alias.name}"
                        found.append((module, full if full in modules() else base, in_function, child.lineno))
                elif (
                    isinstance(child, ast.Call)
                    and isinstance(child.func, ast.Name)
                    and child.func.id == "lazy_import"
                    and child.args
                    and isinstance(child.args[0], ast.Constant)
                ):
                    found.append((module, child.args[0].value, in_function, child.lineno))
                visit(child, inner)

        visit(tree, False)
    return found


def _layer(module: str) -> int:
    short = _short(module)
    for index, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(short, p) for p in patterns):
            return index
    raise AssertionError(f"{module} has no layer: add it to LAYERS here and to docs/ARCHITECTURE.md")


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in modules()}
    for module, target, _, _ in imports():
        if target.split(".")[0] == "sparse_deploy":
            resolved = _resolve(module, target)
            if resolved not in (module, "sparse_deploy"):  # the package root: its version, no code
                edges[module].add(resolved)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strongconnect(w)
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return found


# ----------------------------------------------------------------------------- layers and loops


def test_every_module_has_a_layer():
    for module in modules():
        if module != "sparse_deploy":
            _layer(module)


def test_no_import_loops():
    assert _cycles(_edges()) == []


def test_no_module_imports_a_layer_above_it():
    upward = [
        f"{_short(a)} ({LAYERS[_layer(a)][0]}) imports {_short(b)} ({LAYERS[_layer(b)][0]})"
        for a, targets in _edges().items()
        if a != "sparse_deploy"
        for b in sorted(targets)
        if _layer(b) > _layer(a)
    ]
    assert upward == []


def test_imports_inside_functions_only_of_heavy_packages():
    """Only heavy or optional packages are imported inside functions; the package itself and torch only by the
    GPU kit's parent process (lazy.HEAVY says why), so an import loop cannot hide behind a function-level import."""
    inside = [
        f"{_short(m)}:{line} imports {target}"
        for m, target, in_function, line in imports()
        if in_function
        and (
            target.split(".")[0] not in HEAVY
            or (
                target.split(".")[0] in ("sparse_deploy", "torch")
                and not any(fnmatch.fnmatchcase(_short(m), p) for p in LAZY_PACKAGE_IMPORTERS)
            )
        )
    ]
    assert inside == []


def test_lazy_imports_are_declared_at_the_top_of_heavy_packages_only():
    problems = []
    for module, target, in_function, line in imports():
        call = f"{_short(module)}:{line} lazy_import({target!r})"
        source = modules()[module].read_text().splitlines()[line - 1]
        if "lazy_import(" not in source:
            continue
        if in_function:
            problems.append(f"{call} inside a function: declare it at the top")
        top = target.split(".")[0]
        if top not in HEAVY:
            problems.append(f"{call}: not a heavy or optional package (lazy.HEAVY)")
        elif top in ("sparse_deploy", "torch") and not any(
            fnmatch.fnmatchcase(_short(module), p) for p in LAZY_PACKAGE_IMPORTERS
        ):
            problems.append(f"{call}: only the GPU kit may import {top} lazily")
    assert problems == []


def test_the_layer_table_is_the_one_architecture_md_shows():
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    for name, patterns in LAYERS:
        row = next((line for line in text.splitlines() if line.startswith(f"| {name} |")), None)
        assert row is not None, f"docs/ARCHITECTURE.md has no row for layer '{name}'"
        for pattern in patterns:
            assert f"`{pattern}`" in row, f"docs/ARCHITECTURE.md's '{name}' row does not list `{pattern}`"


# ----------------------------------------------------------------------------- imports without GPU libraries

BLOCKED = ("tensorrt", "pycuda")

# Runs in a fresh interpreter so that nothing this test session imported can mask a problem.
SCRIPT = r"""
import importlib, json, pkgutil, sys

BLOCKED = %(blocked)r
attempts = []

class Recorder:
    # Sees every import attempt of a blocked library, whether or not it is installed here.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
        return None

sys.meta_path.insert(0, Recorder())
import sparse_deploy
assert sparse_deploy.__file__ and sparse_deploy.__file__.endswith("__init__.py"), sparse_deploy
bare = {
    "attempts": list(attempts),
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
}

for name in BLOCKED:  # importing them now fails, as on a machine without them
    sys.modules[name] = None

failures = {}
imported = ["sparse_deploy"]
def onerror(name):
    failures[name] = repr(sys.exc_info()[1])

for info in pkgutil.walk_packages(sparse_deploy.__path__, "sparse_deploy.", onerror=onerror):
    try:
        importlib.import_module(info.name)  # __main__ modules too: each runs its command only as __main__
        imported.append(info.name)
    except BaseException as exc:
        failures[info.name] = repr(exc)

print(json.dumps({
    "bare": bare,
    "imported": imported,
    "failures": failures,
    "still_blocked": [sys.modules.get(n, "missing") is None for n in BLOCKED],
}))
"""


def test_every_submodule_imports_without_gpu_libraries():
    # cwd=REPO puts the source tree first on sys.path, so this checks the code, not an install.
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT % {"blocked": BLOCKED}], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # `import sparse_deploy` alone neither loads nor even tries to import a GPU-only library.
    assert result["bare"] == {"attempts": [], "loaded": []}
    assert result["failures"] == {}
    assert set(modules()) <= set(result["imported"]), sorted(set(modules()) - set(result["imported"]))
    assert result["still_blocked"] == [True] * len(BLOCKED)  # nobody swapped in a stand-in


# ----------------------------------------------------------------------------- entry points


def test_every_command_has_one_entry_point_layout():
    guard = 'if __name__ == "__main__":\n    raise SystemExit(main())'
    runners = {str(p.relative_to(PACKAGE)) for p in modules().values() if '__name__ == "__main__"' in p.read_text()}
    assert runners == set(ENTRY_POINTS.values())
    for command, file in ENTRY_POINTS.items():
        text = (PACKAGE / file).read_text()
        assert text.rstrip().endswith(guard), (
            f"python -m sparse_deploy.{command}: {file} must end with the main() guard"
        )
        package = f"sparse_deploy.{command}" if command else "sparse_deploy"
        module = __import__(package + (".__main__" if file.endswith("__main__.py") else ""), fromlist=["main"])
        assert getattr(module.main, "is_cli_entry", False), f"{file}: main must be an errors.cli_entry"


def test_package_main_modules_only_start_their_cli():
    for file in (f for f in ENTRY_POINTS.values() if f.endswith("__main__.py")):
        tree = ast.parse((PACKAGE / file).read_text())
        body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert [type(n).__name__ for n in body] == ["ImportFrom", "If"], file


# ----------------------------------------------------------------------------- tests mirror the code


@cache
def modules_imported_by_tests() -> set[str]:
    """Every sparse_deploy module some test file imports."""
    found: set[str] = set()
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                if name in modules():
                    found.add(name)
    return found


def test_every_module_of_60_lines_or_more_is_imported_by_a_test():
    untested = [
        m
        for m, p in modules().items()
        if len(p.read_text().splitlines()) >= 60 and m not in modules_imported_by_tests()
    ]
    assert untested == []


def test_unit_test_files_are_named_after_the_module_they_test():
    unit = TESTS / "unit"
    strays = []
    for path in sorted(unit.rglob("test_*.py")):
        relative = path.relative_to(unit)
        if str(relative) in UNMIRRORED_TESTS:
            continue
        stem = path.stem.removeprefix("test_")
        target = PACKAGE.joinpath(*relative.parent.parts, stem)
        if not (target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()):
            strays.append(str(relative))
    assert strays == [], "tests/unit/<dirs>/test_<module>.py must mirror sparse_deploy/<dirs>/<module>.py"
