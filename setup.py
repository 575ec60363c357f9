"""Build hook: the wheel ships the dashboard and its demo files as package data of ``pdae_core.app``.

The project's metadata is in pyproject.toml. The repository keeps one copy of the dashboard (``app.py``,
``pages/``, ``.streamlit/config.toml``), of the bundled checkpoints and shipped cell maps
(``checkpoints/``) and of the saved benchmark summaries (``benchmarks/results/``), at its root, where
``streamlit run app.py`` runs them. Building copies them into ``pdae_core/app/`` of the wheel, with the
same layout, where ``pdae_core.app.app_dir`` finds them and ``pdae dashboard`` runs them. An editable
install copies nothing (``pdae_core.app`` then finds them in the clone). MANIFEST.in puts the same files
in the sdist, so that a wheel built from it has them too.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
APP_PACKAGE = "pdae_core.app"
#: what the wheel ships under pdae_core/app/, as globs relative to the repository root
APP_FILES = (
    "app.py",
    "pages/*.py",
    ".streamlit/config.toml",
    "checkpoints/*/config.json",
    "checkpoints/*/model.safetensors",
    "checkpoints/embeddings/README.md",
    "checkpoints/embeddings/*/reference.json",
    "checkpoints/embeddings/*/reference.safetensors",
    "benchmarks/results/*/summary.md",
    "benchmarks/results/*/summary.csv",
    "benchmarks/results/*/per_condition.csv",
    "benchmarks/results/*/per_double.csv",
)
#: a build without these fails instead of shipping a package without its dashboard
REQUIRED = ("app.py", "pages/common.py", ".streamlit/config.toml", "checkpoints/norman19_devel/config.json",
            "checkpoints/norman19_devel/model.safetensors")


def app_files(root: Path = ROOT) -> list[str]:
    """The files of :data:`APP_FILES` under ``root``, as sorted POSIX paths relative to it."""
    found = {p.relative_to(root).as_posix() for pattern in APP_FILES for p in root.glob(pattern) if p.is_file()}
    missing = [f for f in REQUIRED if f not in found]
    if missing:
        raise FileNotFoundError(f"Cannot build pdae-core with its dashboard: missing {', '.join(missing)} in {root}.")
    return sorted(found)


class BuildPyWithApp(build_py):
    """``build_py`` that also copies :func:`app_files` into the build folder of ``pdae_core.app``."""

    def _get_data_files(self):  # type: ignore[no-untyped-def]
        files = super()._get_data_files()
        if self.editable_mode:  # the clone's files are used in place
            return files
        build_dir = os.path.join(self.build_lib, *APP_PACKAGE.split("."))
        files.append((APP_PACKAGE, str(ROOT), build_dir, [os.path.join(*f.split("/")) for f in app_files()]))
        return files


setup(cmdclass={"build_py": BuildPyWithApp})
