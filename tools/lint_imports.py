"""Run import-linter's layering contracts (pyproject.toml) on shardc as it installs.

    python tools/lint_imports.py                 # check; exit 1 naming each broken contract
                                                 # (or one import-linter cannot read)
    python tools/lint_imports.py --root DIR      # check another checkout (the tests use this)

Why a wrapper and not a bare ``lint-imports``: two top-level folders install *inside* the
package (``passes/`` as ``shardc.passes``, ``topologies/`` as ``shardc.stock``, see
setup.py), but import-linter finds a package's modules by walking its folder on disk, so
it would see no ``shardc.passes`` at all and every contract about the passes would pass
vacuously. This builds the installed shape as symlinks in a temporary folder, puts it
first on ``PYTHONPATH`` and runs ``lint-imports`` there, with the contracts read from
the checkout's pyproject.toml.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# setup.py's PACKAGE_DIR, the folders that install under another name.
MAPPED = {"passes": "passes", "topologies": "stock"}


def installed_view(root: Path, into: Path) -> Path:
    """Lay ``root``'s package out under ``into`` as it installs; returns the package dir."""
    pkg = into / "shardc"
    pkg.mkdir()
    for entry in sorted((root / "shardc").iterdir()):
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for folder, name in MAPPED.items():
        (pkg / name).symlink_to(root / folder)
    return pkg


def main(argv: list[str] | None = None) -> int:
    """Check the contracts; the exit status is lint-imports' own (0 kept, 1 broken)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to check")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which(
        "lint-imports"
    )
    if exe is None:
        print("lint-imports not found: pip install -e '.[test]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="shardc-layers-") as tmp:
        installed_view(root, Path(tmp))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([tmp, os.environ.get("PYTHONPATH", "")])}
        # --no-cache: the view's path changes each run, so a cache would never hit.
        cmd = [exe, "--no-cache", str(root / "pyproject.toml")]
        return subprocess.run(cmd, cwd=tmp, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
