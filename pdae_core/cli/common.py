"""What the ``pdae`` commands share: exit codes, the help formatter, argument types,
the --data / --dataset options and their loading, output checks (never onto an input),
escaping of text read from files, and the progress bar.

Only the standard library and :mod:`pdae_core.errors` at import time: ``pdae --help``,
``pdae datasets`` and ``pdae info`` import this module and must start fast, so anndata,
torch and the data loaders are imported inside the functions that need them
(``TqdmProgress`` on first use).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, DatasetUnavailableError, PDAEError

if TYPE_CHECKING:
    import anndata as ad

    from ..train.loop import ProgressBar as TqdmProgress  # noqa: F401

PROG = "pdae"
EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class HelpFormatter(argparse.HelpFormatter):
    """Shows meaningful defaults; wraps one-paragraph descriptions, keeps multi-line ones
    (the example epilogs) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (
            "%(default)" not in help_text
            and action.option_strings
            and default not in (None, argparse.SUPPRESS, [])
            and not isinstance(default, bool)
        ):
            help_text += " (default: %(default)s)"
        return help_text


# ---------------------------------------------------------------------------------
# printing text read from files

# bidirectional overrides and isolates reorder what a terminal shows (like escape codes, they
# can make a name look like another)
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape(ch: str) -> str:
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def printable(text: object, newlines: bool = False) -> str:
    """``text`` safe to print on a terminal: every control character (C0, DEL, C1 and the
    bidirectional overrides) written as an escape such as ``\\x1b``, so that a gene, perturbation
    or file name cannot move the cursor, recolour or rewrite the screen. With ``newlines``,
    line breaks are kept (multi-line reports); otherwise they are escaped too."""
    text = str(text)
    if text.isprintable() and not any(ch in _BIDI for ch in text):
        return text
    return "".join(
        ch if (newlines and ch == "\n") or not (unicodedata.category(ch) == "Cc" or ch in _BIDI) else _escape(ch)
        for ch in text
    )


# ---------------------------------------------------------------------------------
# argument types


def int_at_least(lo: int, what: str):
    """An argparse type: an integer >= ``lo`` (``what`` names the bound in the message)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {v}")
        return v

    return parse


positive_int = int_at_least(1, "positive")
non_negative_int = int_at_least(0, "non-negative")


def threads_value(text: str) -> int | str:
    """An argparse type for ``--threads``: ``auto`` or a positive integer."""
    if text.strip().lower() == "auto":
        return "auto"
    return positive_int(text)


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    """``--threads``, for the commands that train or predict (applied by ``main`` after parsing)."""
    p.add_argument("--threads", type=threads_value, default="auto", metavar="{auto,N}",
                   help="CPU threads of torch: auto takes the cores idle when the command starts (at least 1), "
                   "so two jobs on one machine do not slow each other down; N fixes the number")


def integer(text: str) -> int:
    """An argparse type: any integer."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def finite_float(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def int_list(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated positive integers (layer sizes), e.g. ``512,256``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 512,256, got {text!r}")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers like 512,256, got {text!r}"
        ) from None
    if min(vals) < 1:
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return vals


def float_list(text: str) -> tuple[float, ...]:
    """An argparse type: comma-separated finite numbers, e.g. ``0.5,1,2``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.5,1,2, got {text!r}")
    return tuple(finite_float(p) for p in parts)


def str_list(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated names, e.g. ``a,b``."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated names like a,b, got {text!r}")
    return parts


def holdout_list(values: Sequence[str]) -> list[str]:
    """The conditions of repeated, comma-separated --holdout values, de-duplicated in order."""
    out: list[str] = []
    for v in values:
        for c in v.split(","):
            c = c.strip()
            if c and c not in out:
                out.append(c)
    return out


def preview(items: Sequence[Any], n: int = 8) -> str:
    """The first ``n`` items, comma-separated, with the total when there are more."""
    items = list(items)
    shown = ", ".join(map(str, items[:n]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


# ---------------------------------------------------------------------------------
# data: --data FILE or --dataset NAME


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The options naming the input data: --data / --dataset and the dataset's loader options."""
    g = p.add_argument_group("data (one of --data / --dataset)")
    src = g.add_mutually_exclusive_group(required=required)
    src.add_argument("--data", metavar="FILE.h5ad", help="an AnnData file")
    src.add_argument("--dataset", metavar="NAME", help="a built-in dataset (see `pdae datasets`)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="with --dataset: where built-in datasets are stored (default: $PDAE_DATA_DIR, else the "
                   "user cache)")
    g.add_argument(
        "--no-download", dest="download", action="store_false",
        help="with --dataset: fail instead of downloading a dataset that is not in the data directory",
    )
    g.add_argument(
        "--dataset-option", action="append", default=[], metavar="KEY=VALUE", dest="dataset_options",
        help="with --dataset: an option of the dataset's loader, e.g. source=gears (norman19_full), "
        "keep_unassigned=true (schraivogel20), n_genes=50 (synthetic); repeatable",
    )


def datasets_module() -> Any:
    """:mod:`pdae_core.data.datasets`, or a clear error when it cannot be imported."""
    try:
        from ..data import datasets
    except ImportError as e:
        raise PDAEError(f"built-in datasets are not available in this installation ({e}); use --data FILE.h5ad") from None
    return datasets


def option_value(text: str) -> Any:
    """A --dataset-option value as a bool, None, int, float or the string itself."""
    low = text.strip().lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low == "none":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def dataset_options(values: Sequence[str]) -> dict[str, Any]:
    """The KEY=VALUE --dataset-option values as keyword arguments of the loader."""
    opts: dict[str, Any] = {}
    for item in values:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise DataError(f"--dataset-option {item!r}: write KEY=VALUE, e.g. source=gears.")
        opts[key.strip()] = option_value(val)
    return opts


def unavailable_message(error: DatasetUnavailableError, download: bool) -> str:
    """The message of a built-in dataset that is not available, with what to do on the command
    line: the sentence naming the missing file and the data folder, then one sentence of options
    (--no-download, --data-dir, $PDAE_DATA_DIR) in place of the library's Python ones."""
    problem = getattr(error, "problem", None)  # download.DataFileUnavailableError: file, folder, url
    if problem is None:  # a loader's own message (it names the files it needs)
        fetch = "drop --no-download to fetch it, " if not download else ""
        return (f"{error} On the command line, {fetch}pass --data-dir DIR for a folder that holds it, or set "
                "$PDAE_DATA_DIR.")
    folder, url = error.folder, error.url  # type: ignore[attr-defined]
    options = [f"download it from {url} and save it in {folder}" if url else f"save it in {folder}"]
    if not download and url:
        options.append("drop --no-download to let pdae fetch it")
    options.append("pass --data-dir DIR (or set $PDAE_DATA_DIR) for a folder that has it")
    text = ", ".join(options[:-1]) + ", or " + options[-1] + "."
    return f"{problem} {text[0].upper()}{text[1:]}"


def check_file_flags(args: argparse.Namespace) -> None:
    """With --data FILE, the flags that only make sense for a built-in dataset are errors."""
    for flag, given in (("--data-dir", args.data_dir is not None), ("--dataset-option", bool(args.dataset_options)),
                        ("--no-download", not args.download)):
        if given:
            raise DataError(f"{flag} only applies with --dataset NAME, not with --data FILE.")


def check_not_empty(n_obs: int, n_vars: int, source: str) -> None:
    """Refuse data without cells or without genes, naming where it came from."""
    if n_obs == 0 or n_vars == 0:
        what = "no cells" if n_obs == 0 else "no genes"
        raise DataError(f"{source} is empty: it holds {what} ({n_obs} cells x {n_vars} genes).")


def load_data(args: argparse.Namespace, profiles_ok: bool = False) -> tuple[ad.AnnData, str]:
    """The AnnData named by --data or --dataset (never empty), and a short description of
    where it came from. A built-in table of changes from control is refused unless
    ``profiles_ok`` (the profile model type takes it)."""
    if args.data is not None:
        check_file_flags(args)
        from ..data.registry import read_h5ad

        adata = read_h5ad(args.data, backed=getattr(args, "backed", False))
        check_not_empty(adata.n_obs, adata.n_vars, args.data)
        return adata, args.data
    options = dataset_options(args.dataset_options)
    ds = datasets_module()
    known = ds.list_datasets()
    if args.dataset not in known:
        raise DataError(f"Unknown dataset {args.dataset!r}; built-in datasets: {', '.join(known)} (see `pdae datasets`).")
    try:
        adata = ds.load_dataset(args.dataset, data_dir=args.data_dir, download=args.download, **options)
    except DatasetUnavailableError as e:
        raise DatasetUnavailableError(unavailable_message(e, args.download)) from None
    from ..data.defaults import holds_profiles

    if holds_profiles(adata) and not profiles_ok:
        raise DataError(
            f"Dataset {args.dataset!r} holds per-perturbation log-fold-changes vs control (no single cells, no "
            "control cells), which a single-cell model cannot be trained on or predict from: train the profile "
            "model on it (pdae train --level pseudobulk), compare effects (pdae benchmark --level pseudobulk), "
            "or pick a single-cell dataset (see `pdae datasets`)."
        )
    check_not_empty(adata.n_obs, adata.n_vars, f"dataset {args.dataset}")
    return adata, f"dataset {args.dataset}"


# ---------------------------------------------------------------------------------
# outputs


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.fspath(path))).resolve()


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder (through symlinks, relative paths
    and, where both exist, hard links)."""
    try:
        if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return _resolved(a) == _resolved(b)


def lies_inside(inner: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``inner`` lies (at any depth) inside the folder ``folder``."""
    ri, rf = _resolved(inner), _resolved(folder)
    if rf in ri.parents:
        return True
    if os.path.isdir(folder):  # the same folder reached under another name (bind mount, ...)
        for parent in ri.parents:
            try:
                if parent.exists() and os.path.samefile(parent, folder):
                    return True
            except OSError:
                pass
    return False


def check_output_not_input(
    out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None], out_flag: str = "--out"
) -> None:
    """Refuse (``DataError``) an output path that is one of the ``inputs`` ({flag: path}, None
    skipped), lies inside an input folder, or is a folder holding an input: a command never
    writes over what it reads."""
    for flag, inp in inputs.items():
        if inp is None:
            continue
        if same_path(out, inp):
            raise DataError(
                f"{out_flag} {out} is the input {flag} {inp}; write the output to another path "
                "(the input is never modified)."
            )
        if lies_inside(out, inp):
            raise DataError(
                f"{out_flag} {out} lies inside the input {flag} {inp}; write the output elsewhere "
                "(the input is never modified)."
            )
        if lies_inside(inp, out):
            raise DataError(
                f"The input {flag} {inp} lies inside the output {out_flag} {out}; choose an output "
                "that does not hold the input."
            )


def write_h5ad_atomic(adata: ad.AnnData, path: Path) -> None:
    """Write ``adata`` to ``path`` through a temporary file, so that an interrupted write
    leaves no partial file."""
    if path.is_dir():
        raise DataError(f"--out {path} is a directory; give a file name such as pred.h5ad.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------------------
# progress


def __getattr__(name: str) -> Any:
    if name == "TqdmProgress":
        # the CLI's training bar is the loop's (a tqdm bar over the steps with the loss and the
        # validation energy distance); importing it imports torch, so only when asked for
        from ..train.loop import ProgressBar

        return ProgressBar
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: imported by :func:`import_libraries` with Ctrl-C held back, in this order
HELD_BACK_IMPORTS = ("torch", "scipy.sparse", "anndata")


def import_libraries() -> None:
    """Import torch, SciPy and anndata with Ctrl-C held back until they are all imported; a Ctrl-C
    pressed meanwhile arrives right after, as a KeyboardInterrupt, which the command line turns
    into a quiet exit with code 130. Two ways a Ctrl-C is lost otherwise: inside torch's import, C++
    code (pybind11) aborts the whole process ("terminate called after throwing ..."); inside the
    initialisation of a Cython extension module (SciPy has many), the KeyboardInterrupt can be
    swallowed (seen when registering its types with ``abc``: the command then ran to the end and
    exited 0)."""
    import importlib
    import signal
    import threading

    hold = (not all(m in sys.modules for m in HELD_BACK_IMPORTS) and hasattr(signal, "pthread_sigmask")
            and threading.current_thread() is threading.main_thread())
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hold else None
    try:
        for m in HELD_BACK_IMPORTS:
            importlib.import_module(m)
    finally:
        if hold:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

