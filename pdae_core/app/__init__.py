"""Where the dashboard and its demo files are: ``app.py``, ``pages/``, ``.streamlit/config.toml``, the
bundled checkpoints (``checkpoints/``, with the shipped cell maps in ``checkpoints/embeddings/``) and
the saved benchmark summaries (``benchmarks/results/``).

The repository keeps one copy of these files, at its root, where ``streamlit run app.py`` runs them.
Building the wheel copies them into this package's folder (``setup.py``), so that an installed
package (``pip install "pdae-core[app]"``, then ``pdae dashboard``) has the same layout under
``pdae_core/app/``. :func:`app_dir` answers for both: this folder when the files were installed into
it, else the root of the clone (an editable install, or running from the repository).

Only the standard library: ``pdae dashboard --help`` imports this module.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_CHECKPOINT", "app_dir", "app_script", "checkpoints_dir", "demo_checkpoint"]

#: the bundled checkpoint the dashboard opens with (trained on the ``norman19_devel`` dataset)
DEMO_CHECKPOINT = "norman19_devel"

_HERE = Path(__file__).resolve().parent


def app_dir() -> Path:
    """The folder that holds ``app.py``, ``pages/`` and ``checkpoints/``: this package's folder in an
    installed wheel, else the repository root (a clone or an editable install). Raises
    ``FileNotFoundError`` when neither has them (a build that left the dashboard out)."""
    for folder in (_HERE, _HERE.parents[1]):
        if (folder / "app.py").is_file() and (folder / "pages" / "common.py").is_file():
            return folder
    raise FileNotFoundError(
        f"The dashboard's files (app.py, pages/) are neither in {_HERE} nor in {_HERE.parents[1]}: "
        "reinstall pdae-core from a wheel built with its setup.py, or run from a clone of the repository."
    )


def app_script() -> Path:
    """The dashboard's main script (``streamlit run`` it)."""
    return app_dir() / "app.py"


def checkpoints_dir() -> Path:
    """The folder of the bundled checkpoints (one sub-folder each) and of the shipped cell maps
    (``embeddings/``)."""
    return app_dir() / "checkpoints"


def demo_checkpoint(name: str = DEMO_CHECKPOINT) -> Path:
    """The folder of the bundled checkpoint ``name`` (default: the demo), for
    ``pdae_core.load_model``. Raises ``FileNotFoundError`` naming the bundled ones if it is not there."""
    folder = checkpoints_dir() / name
    if not (folder / "config.json").is_file():
        have = sorted(p.name for p in checkpoints_dir().glob("*") if (p / "config.json").is_file())
        raise FileNotFoundError(f"No bundled checkpoint {name!r} in {checkpoints_dir()}; bundled: {have or 'none'}.")
    return folder
