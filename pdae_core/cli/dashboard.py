"""``pdae dashboard``: start the Streamlit dashboard that is installed with the package.

Runs ``python -m streamlit run <pdae_core/app/app.py>`` (the repository's ``app.py`` in a clone), with
every option this command does not know passed on to Streamlit. The app's settings
(``.streamlit/config.toml`` next to ``app.py``) apply from any working directory; options given here
override them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from .common import EXIT_ERROR, EXIT_OK, HelpFormatter

DASHBOARD_EXAMPLES = """\
examples:
  # the dashboard on the bundled demo, at http://localhost:8501
  pdae dashboard

  # another port; any option of `streamlit run` is passed on
  pdae dashboard --server.port 8600 --server.address 0.0.0.0

  # the bundled demo checkpoint, for the other commands
  pdae predict "$(pdae dashboard --demo-checkpoint)" --dataset norman19_devel \\
      --target KLF1+MAP2K6 --out pred.h5ad

The dashboard needs Streamlit: pip install "pdae-core[app]"."""

INSTALL_HINT = "pip install 'pdae-core[app]'"


class PassThroughParser(argparse.ArgumentParser):
    """A parser that keeps the options it does not know, in order, as ``streamlit_args``, instead of
    refusing them (they are Streamlit's: ``--server.port 8600``)."""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        ns, extra = super().parse_known_args(args, namespace)
        ns.streamlit_args = [*(getattr(ns, "streamlit_args", None) or []), *extra]
        return ns, []


def add_parser(sub: Any) -> None:
    """Register ``dashboard``."""
    d = sub.add_parser(
        "dashboard",
        help="start the Streamlit dashboard (Streamlit options such as --server.port pass through)",
        description="Start the dashboard installed with pdae_core (the pages Data, Model, Compose, "
        "Interactions, Embeddings, Benchmark and Glossary, opening on the bundled demo checkpoint) "
        "with `streamlit run`. Options not listed here go to Streamlit.",
        epilog=DASHBOARD_EXAMPLES,
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # --server.* must not be read as an abbreviation of ours
    )
    d.__class__ = PassThroughParser  # add_parser builds the parent's class; this one keeps unknown options
    d.add_argument("--demo-checkpoint", action="store_true",
                   help="print the folder of the bundled demo checkpoint (for `pdae predict` or `pdae info`) "
                   "and exit")
    d.set_defaults(func=run, streamlit_args=[])


def streamlit_command(streamlit_args: Sequence[str] = ()) -> list[str]:
    """The command line that starts the dashboard with this Python."""
    from ..app import app_script

    return [sys.executable, "-m", "streamlit", "run", str(app_script()), *streamlit_args]


def run(args: argparse.Namespace) -> int:
    """``pdae dashboard``."""
    from ..app import demo_checkpoint

    if args.demo_checkpoint:
        print(demo_checkpoint())
        return EXIT_OK
    if importlib.util.find_spec("streamlit") is None:
        print(f"error: the dashboard needs Streamlit, which is not installed: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_ERROR
    cmd = streamlit_command(args.streamlit_args)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":  # become the server: signals (Ctrl-C, kill) reach Streamlit itself
        os.execv(sys.executable, cmd)
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Streamlit got the Ctrl-C too: let it shut down
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
