"""``pdae datasets``: list the built-in datasets."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import EXIT_OK, PROG, HelpFormatter, datasets_module

DATASETS_EXAMPLES = """\
examples:
  pdae datasets
  pdae train --dataset synthetic --out ckpt/"""


def add_parser(sub: Any) -> None:
    """Register ``datasets``."""
    d = sub.add_parser(
        "datasets",
        help="list the built-in datasets",
        description="List the built-in datasets that `--dataset NAME` accepts, with their descriptions.",
        epilog=DATASETS_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    d.add_argument("--json", action="store_true", help="print a JSON object {name: description}")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``pdae datasets``."""
    known = datasets_module().list_datasets()
    if args.json:
        print(json.dumps(dict(known), indent=1))
        return EXIT_OK
    width = max((len(n) for n in known), default=0)
    for name, desc in known.items():
        print(f"{name:<{width}}  {desc}")
    print(f"\nUse with: {PROG} train --dataset NAME --out CHECKPOINT_DIR")
    return EXIT_OK
