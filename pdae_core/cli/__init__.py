"""Command-line interface: ``pdae train | preprocess | predict | info | benchmark | datasets``.

Every user-caused error (bad file, column, target, checkpoint, hyperparameter)
is printed as ``error: <message>`` on stderr with exit code 2, never as a
traceback; Ctrl-C exits with 130 and leaves no partial checkpoint or output file.

Each command lives in its own module (``train``, ``preprocess``, ``predict``, ``info``,
``benchmark``, ``datasets``), which registers its subparser (``add_parser``) and runs
it (``run``); ``common`` holds what they share. The hyperparameter flags of ``train``
are generated from the selected model's config (``model_flags``), so ``main`` reads
``--model`` before it builds the parser.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from ..errors import PDAEError
from . import benchmark, datasets, info, predict, preprocess, train
from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, PROG, HelpFormatter, TqdmProgress
from .info import checkpoint_summary

__all__ = [
    "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "PROG", "TqdmProgress", "build_parser", "checkpoint_summary", "main",
]


def build_parser(model: str = train.DEFAULT_MODEL) -> argparse.ArgumentParser:
    """The ``pdae`` argument parser (exposed for documentation and tests); ``train`` gets
    the hyperparameter flags of ``model``."""
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Predict single-cell responses to unseen perturbations and their combinations "
        "with a Perturbation Distribution Autoencoder.",
        epilog="Run `pdae COMMAND --help` for the options and examples of each command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pdae_core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train.add_parser(sub, model)
    for command in (preprocess, predict, info, benchmark, datasets):
        command.add_parser(sub)
    return parser


def _exit_code(code: object) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pdae`` command line; returns the exit code (0 ok, 2 error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(train.selected_model(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        return _exit_code(e.code)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    args.argv = argv
    t0 = time.perf_counter()
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.perf_counter() - t0:.0f} s.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `pdae info ckpt --json | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except (PDAEError, ValueError, FileNotFoundError, FloatingPointError, OSError) as e:
        print(f"error: {e}" if str(e) else f"error: {type(e).__name__}", file=sys.stderr)
        return EXIT_ERROR
