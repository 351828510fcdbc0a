"""The package imports on a machine with no TensorRT or PyCUDA, and pulls neither in by itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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
    if info.name.rsplit(".", 1)[-1] == "__main__":
        continue  # a CLI entry point: importing it would run the command
    try:
        importlib.import_module(info.name)
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


def _run() -> dict:
    # cwd=REPO puts the source tree first on sys.path, so this checks the code, not an install.
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT % {"blocked": BLOCKED}],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_submodule_imports_without_gpu_libraries():
    result = _run()
    # `import sparse_deploy` alone neither loads nor even tries to import a GPU-only library.
    assert result["bare"] == {"attempts": [], "loaded": []}
    assert result["failures"] == {}
    imported = set(result["imported"])
    expected = {
        p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
        for p in (REPO / "sparse_deploy").rglob("*.py")
        if p.stem != "__main__" and "__pycache__" not in p.parts
    }
    assert expected <= imported, sorted(expected - imported)
    assert {"sparse_deploy.masks", "sparse_deploy.sparsify", "sparse_deploy.train", "sparse_deploy.data"} <= imported
    for sub in ("backends", "triton"):
        if (REPO / "sparse_deploy" / sub / "__init__.py").exists():
            assert any(name.startswith(f"sparse_deploy.{sub}.") for name in imported), sub
    assert result["still_blocked"] == [True] * len(BLOCKED)  # nobody swapped in a stand-in
