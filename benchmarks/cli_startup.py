"""Start-up time of the ``pdae`` command line.

Runs each command ``--repeats`` times, every time in a fresh Python process
(``python -m pdae_core.cli ARGS``, output discarded), and reports the median, min and
max wall time per command, measured with ``time.perf_counter()`` around
``subprocess.run``. The commands: ``--help``, ``datasets`` and ``info CHECKPOINT``
(default: the bundled ``checkpoints/norman19_devel``), plus ``train --help`` (which
builds the hyperparameter flags from the model configs). The target is under 1.5 s
for ``--help``, ``datasets`` and ``info`` on 2 cores. One warm-up run per command is
dropped (it fills the OS file cache). Also reports which heavy modules (torch, scanpy,
anndata, streamlit) each command imports (``python -X importtime``).

    python benchmarks/cli_startup.py
    python benchmarks/cli_startup.py --repeats 9 --out benchmarks/results/cli_startup.md

A script, never a test: timings depend on the machine (named in the report's header).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _report import cpu_model, emit

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "scanpy", "anndata", "streamlit")
TARGET_S = 1.5


def commands(checkpoint: str) -> list[tuple[str, list[str], bool]]:
    """(label, arguments, held to the target)."""
    return [
        ("pdae --help", ["--help"], True),
        ("pdae datasets", ["datasets"], True),
        ("pdae info CKPT", ["info", checkpoint], True),
        ("pdae train --help", ["train", "--help"], False),
    ]


def run_once(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pdae_core.cli", *args], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pdae {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return dt


def heavy_imports(args: list[str], env: dict[str, str]) -> list[str]:
    """The heavy top-level packages that ``pdae ARGS`` imports."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pdae_core.cli", *args], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = set()
    for line in proc.stderr.splitlines():
        name = line.rsplit("|", 1)[-1].strip()
        if name in HEAVY:
            seen.add(name)
    return [h for h in HEAVY if h in seen]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed runs per command (default 5)")
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "norman19_devel"),
                   help="checkpoint for `pdae info` (default: the bundled norman19_devel)")
    p.add_argument("--out", help="also write the report to this file")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows = []
    for label, cmd, targeted in commands(args.checkpoint):
        run_once(cmd, env)  # warm-up
        times = [run_once(cmd, env) for _ in range(args.repeats)]
        med = statistics.median(times)
        rows.append((label, med, min(times), max(times), targeted, heavy_imports(cmd, env)))
        print(f"{label:<20} median {med:.2f} s", file=sys.stderr)
    lines = [
        f"# CLI start-up time ({args.repeats} fresh processes per command, median)",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}.",
        "",
        "| command | median s | min s | max s | target | heavy imports |",
        "|---|---|---|---|---|---|",
    ]
    for label, med, lo, hi, targeted, heavy in rows:
        verdict = ("met" if med < TARGET_S else "NOT met") if targeted else "-"
        lines.append(f"| `{label}` | {med:.2f} | {lo:.2f} | {hi:.2f} | {verdict} | {', '.join(heavy) or 'none'} |")
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
