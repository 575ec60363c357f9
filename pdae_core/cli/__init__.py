"""Command-line interface: ``pdae train | preprocess | predict | interactions | info | benchmark | datasets``.

Every user-caused error (bad file, column, target, checkpoint, hyperparameter)
is printed as ``error: <message>`` on stderr with exit code 2, never as a
traceback; Ctrl-C exits with 130 and leaves no partial checkpoint or output file.

Each command lives in its own module (``train``, ``preprocess``, ``predict``, ``info``,
``benchmark``, ``datasets``), which registers its subparser (``add_parser``) and runs
it (``run``); ``common`` holds what they share. The hyperparameter flags of ``train``
are generated from the selected model's config (``model_flags``), so ``main`` reads
``--model`` before it builds the parser.

Start-up time: ``main`` imports only the module of the chosen command (the others are listed
in ``pdae --help`` by name and one-line help, :data:`COMMANDS`), and the modules import torch,
anndata and scanpy inside the functions that need them, so that ``pdae --help``, ``pdae
datasets`` and ``pdae info`` start in well under two seconds (``benchmarks/cli_startup.py``).
"""

from __future__ import annotations

# Only the standard library at import time: ``main`` imports the command modules (and with
# them torch and anndata) inside its Ctrl-C handler, so that an interrupt during those
# seconds of imports exits quietly with 130 instead of printing a traceback.
import argparse
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "COMMANDS", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "PROG", "TqdmProgress", "build_parser",
    "checkpoint_summary", "main",
]

_INTERRUPTED = 130  # common.EXIT_INTERRUPTED, known before any import
_LAZY = {"EXIT_ERROR": "common", "EXIT_INTERRUPTED": "common", "EXIT_OK": "common", "PROG": "common",
         "TqdmProgress": "common", "checkpoint_summary": "info"}

#: command -> its one-line help, in the order of ``pdae --help`` (each module registers the
#: same text; tests/test_cli_startup.py checks that they agree)
COMMANDS: dict[str, str] = {
    "train": "train a model on an AnnData file or a built-in dataset and save a checkpoint",
    "preprocess": "normalize_total + log1p (+ HVG selection) of a raw-count .h5ad, streamed from disk",
    "predict": "predict the cells of one or more target conditions and write them to an .h5ad",
    "interactions": "predict every pair of the measured singles and rank how they interact",
    "info": "describe a checkpoint: model, genes, perturbations, training and preprocessing",
    "benchmark": "compare models and baselines on held-out combinations (metrics, tables, figures)",
    "datasets": "list the built-in datasets",
    "dashboard": "start the Streamlit dashboard (Streamlit options such as --server.port pass through)",
}


#: commands that always import torch (``info`` only when it loads the model)
_NEEDS_TORCH = frozenset({"train", "predict", "interactions", "benchmark"})


def __getattr__(name: str) -> Any:  # the re-exported names, imported on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser(model: str | None = None, commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``pdae`` argument parser (exposed for documentation and tests); ``train`` gets
    the hyperparameter flags of ``model`` (default: the default model). Only the subcommands in
    ``commands`` (default: all) get their options, which imports their modules; the others are
    listed by name and one-line help, which is all that ``pdae --help`` shows of them."""
    import importlib

    from .._version import __version__
    from .common import PROG, HelpFormatter

    full = set(COMMANDS if commands is None else commands)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Predict single-cell responses to unseen perturbations and their combinations "
        "with a Perturbation Distribution Autoencoder.",
        epilog="Run `pdae COMMAND --help` for the options and examples of each command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pdae_core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        if name not in full:
            sub.add_parser(name, help=help_text, formatter_class=HelpFormatter)
            continue
        module = importlib.import_module(f".{name}", __name__)
        if name == "train":
            module.add_parser(sub, model or module.DEFAULT_MODEL)
        else:
            module.add_parser(sub)
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand of a command line (its first word that is not an option), if it is one
    of :data:`COMMANDS`; the only options before it (``--help``, ``--version``) take no value."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


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
    from .common import EXIT_ERROR, EXIT_OK, import_libraries, printable

    argv = list(sys.argv[1:] if argv is None else argv)
    command = chosen_command(argv)
    if command in _NEEDS_TORCH and not {"-h", "--help"} & set(argv):
        import_libraries()  # first, with Ctrl-C held back (a Ctrl-C inside these imports can be lost)
    model = None
    if command == "train":
        from . import train

        model = train.selected_model(argv)
    parser = build_parser(model, commands=[command] if command else [])
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        return _exit_code(e.code)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    args.argv = argv
    if command in _NEEDS_TORCH and getattr(args, "threads", None) is not None:
        from ..train.threads import set_threads

        args.threads_used = set_threads(args.threads)
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
