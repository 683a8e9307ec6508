"""The built wheel works on its own: installed in a fresh venv, run from outside the repo.

Why a test: an editable install hides packaging mistakes (a subpackage missing from the
package list, topologies that only exist in the checkout). This builds the wheel with
``pip wheel --no-deps``, installs it into a new venv under tmp that borrows this
environment's dependencies through a ``.pth`` line (nothing is downloaded), and runs
compile -> check-plan -> verify on a stock topology given by name, with the current
directory outside the repository. It takes about 30-60 s, so it runs in the default
``make test`` (and CI); deselect it with ``-k 'not wheel'`` when iterating locally.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_SKIP = {".git", ".venv", "build", "dist", "out", "__pycache__", ".pytest_cache",
         ".mypy_cache", ".ruff_cache", ".hypothesis"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _SKIP or n.endswith(".egg-info")}


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the source (the checkout gets no build/ folder)."""
    # built without isolation (nothing downloaded): this environment's setuptools builds it
    pytest.importorskip("setuptools", minversion="70.1")  # builds wheels without `wheel`
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_ignore)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "-q", "-w", str(tmp / "dist"), str(src)], tmp, env)
    (built,) = (tmp / "dist").glob("shardc-*.whl")
    return built


def test_wheel_holds_every_package_and_the_stock_topologies(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "shardc").rglob("__init__.py")}
    packages.discard("shardc/stock")  # not a folder in the checkout; checked below
    missing = {p for p in packages if f"{p}/__init__.py" not in names}
    assert not missing, f"subpackages missing from the wheel: {sorted(missing)}"
    assert "shardc/passes/coarsen.py" in names and not any(n.startswith("passes/") for n in names)
    stock = {p.relative_to(ROOT / "topologies").as_posix()
             for p in (ROOT / "topologies").rglob("*.topo")}
    assert {f"shardc/stock/{s}" for s in stock} <= names
    assert "shardc/topology/grammar.lark" in names and "shardc/plan/schedule.schema.json" in names


def test_installed_wheel_compiles_checks_and_verifies(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # borrow this environment's dependencies (torch, onnxruntime, ...): appended after the
    # venv's own site-packages, and without running their .pth files (so the editable
    # shardc of this checkout stays out of the way)
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    bin_ = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHARDC_TOPOLOGY_PATH")}
    env |= {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PATH": f"{bin_}{os.pathsep}{env.get('PATH', '')}"}
    _run([str(bin_ / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
         tmp_path, env)
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(ROOT / "examples" / "models" / "tiny_gpt2.onnx", work / "model.onnx")
    where = _run([str(bin_ / "python"), "-c", "import shardc; print(shardc.__file__)"], work, env)
    assert Path(where.strip()).is_relative_to(venv), where
    shardc = str(bin_ / "shardc")
    listed = json.loads(_run([shardc, "topo", "list", "--json"], work, env))["topologies"]
    assert {"cloudmatrix384", "gb200_nvl72", "localhost"} <= {t["name"] for t in listed}
    summary = json.loads(_run([shardc, "topo", "check", "gb200_nvl72", "--json"], work, env))
    assert summary["compute_devices"] == 72  # its include of kinds/ came from the wheel
    _run([shardc, "compile", "model.onnx", "--topology", "localhost", "--set", "devices=2",
          "--pin", "tp=2", "--mode", "inference", "-o", "plan", "-q"], work, env)
    _run([shardc, "check-plan", "plan"], work, env)
    report = json.loads(_run([shardc, "verify", "plan", "--json"], work, env))
    assert report["ok"] is True, report
