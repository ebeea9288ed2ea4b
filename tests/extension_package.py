"""The example extension package (examples/tradewind-example-ext), installed into a folder of
its own, not into the .venv: offline (--no-index) with the setuptools the .venv has as build
backend. Put the folder on PYTHONPATH (a subprocess) or sys.path (this process, then
`tradewind.extensions.registry.cache_clear()`) for its entry points to be seen."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.corpus import EXAMPLES_DIR

EXAMPLE_PACKAGE = EXAMPLES_DIR / "tradewind-example-ext"


def install_example_extension(root: Path) -> Path:
    """Install the package under `root` (the build writes next to a copy of its source);
    returns the folder to put on the path."""
    source = shutil.copytree(EXAMPLE_PACKAGE, root / "src")
    site = root / "site"
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
            "--no-build-isolation", "--target", str(site), str(source),
        ],
        check=True,
    )  # fmt: skip
    return site
