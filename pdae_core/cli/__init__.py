"""Command-line interface: ``pdae train | preprocess | predict | interactions | info | benchmark | datasets``.

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

# Only the standard library at import time: ``main`` imports the command modules (and with
# them torch and anndata) inside its Ctrl-C handler, so that an interrupt during those
# seconds of imports exits quietly with 130 instead of printing a traceback.
import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = [
    "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "PROG", "TqdmProgress", "build_parser", "checkpoint_summary", "main",
]

_INTERRUPTED = 130  # common.EXIT_INTERRUPTED, known before any import
_LAZY = {"EXIT_ERROR": "common", "EXIT_INTERRUPTED": "common", "EXIT_OK": "common", "PROG": "common",
         "TqdmProgress": "common", "checkpoint_summary": "info"}


def __getattr__(name: str) -> Any:  # the re-exported names, imported on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser(model: str | None = None) -> argparse.ArgumentParser:
    """The ``pdae`` argument parser (exposed for documentation and tests); ``train`` gets
    the hyperparameter flags of ``model`` (default: the default model)."""
    from .._version import __version__
    from . import benchmark, datasets, info, interactions, predict, preprocess, train
    from .common import PROG, HelpFormatter

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Predict single-cell responses to unseen perturbations and their combinations "
        "with a Perturbation Distribution Autoencoder.",
        epilog="Run `pdae COMMAND --help` for the options and examples of each command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pdae_core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train.add_parser(sub, model or train.DEFAULT_MODEL)
    for command in (preprocess, predict, interactions, info, benchmark, datasets):
        command.add_parser(sub)
    return parser


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pdae`` command line; returns the exit code (0 ok, 2 error, 130 interrupted)."""
    t0 = time.perf_counter()
    try:
        return _main(argv)
    except KeyboardInterrupt:  # also during the imports of the commands
        print(f"\ninterrupted after {time.perf_counter() - t0:.0f} s.", file=sys.stderr)
        return _INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    from ..errors import PDAEError
    from . import train
    from .common import EXIT_ERROR, EXIT_OK, printable

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
    import warnings

    default_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, UserWarning):  # ours (and libraries' user-facing ones): one plain line
            print(f"warning: {printable(message)}", file=sys.stderr)
        else:
            default_show(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. `pdae info ckpt --json | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except (PDAEError, ValueError, FileNotFoundError, FloatingPointError, OSError) as e:
        # one line, control characters escaped: messages quote names read from files
        print(f"error: {printable(e)}" if str(e) else f"error: {type(e).__name__}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        warnings.showwarning = default_show
