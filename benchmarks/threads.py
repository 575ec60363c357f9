"""Torch threads on a shared CPU: 1 against 2 threads, alone and next to a competing process,
with OpenMP's default wait policy (threads spin while they wait) and with OMP_WAIT_POLICY=PASSIVE.

Each measurement is its own process (the thread count and the wait policy are fixed when the
OpenMP runtime starts): PDAE with its defaults on synthetic data (``make_synthetic``, 500 genes),
``--steps`` optimiser steps after ``--warmup``, median seconds per step. "Contended" runs a second,
identical training process at the same time (what happens when two benchmarks or two users share
the machine) and reports the measured process; the competitor starts first and runs longer.

    python benchmarks/threads.py --out benchmarks/results/threads.md
    python benchmarks/threads.py --quick      # smoke run: 100 genes, 5 steps

A script, never a test: timings depend on the machine (named in the report's header).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from pdae_core import PDAE, Callback
    from pdae_core.data.synthetic import make_synthetic

    class Timer(Callback):
        def __init__(self):
            self.t = time.perf_counter()
            self.times = []

        def on_step(self, epoch, step, losses):
            now = time.perf_counter()
            self.times.append(now - self.t)
            self.t = now

    adata, _ = make_synthetic(n_perturbations=8, n_doubles=12, n_genes=args.genes, cells_per_condition=200, seed=0)
    model = PDAE.from_anndata(adata, seed=0)
    timer = Timer()
    n = args.steps + args.warmup
    threads = "auto" if args.threads == "auto" else None  # auto: what `pdae train` does by default
    hist = model.fit(adata, max_steps=n, eval_every=10_000, callbacks=[timer], accelerator="cpu", progress_bar=False,
                     threads=threads)
    times = timer.times[args.warmup:]
    used = hist.thread_changes[-1][1] if hist.thread_changes else torch.get_num_threads()
    print(json.dumps({"threads": used, "changes": hist.thread_changes, "median_s": float(np.median(times)),
                      "mean_s": float(np.mean(times)), "steps": len(times)}))


def measure(threads: int | str, passive: bool, contended: bool, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    if threads != "auto":
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads), "--genes", str(args.genes),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    rival = None
    if contended:  # the same training, started first and asked for more steps, so it overlaps the whole measurement
        rival_cmd = cmd[:]
        rival_cmd[rival_cmd.index("--steps") + 1] = str(args.steps * 4)
        rival = subprocess.Popen(rival_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(args.rival_head_start)
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    finally:
        if rival is not None:
            rival.kill()
            rival.wait()
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", default="fixed", help=argparse.SUPPRESS)
    ap.add_argument("--genes", type=int, default=500)
    ap.add_argument("--steps", type=int, default=150, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rival-head-start", type=float, default=8.0, help="seconds the competitor runs first")
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 genes, 5 steps, no head start")
    ap.add_argument("--out", help="write the report here")
    args = ap.parse_args()
    if args.quick:
        args.genes, args.steps, args.warmup, args.rival_head_start = 100, 5, 1, 0.0
    if args.worker:
        worker(args)
        return
    sys.path.insert(0, HERE)
    import torch
    from _report import cpu_model, emit

    rows = []
    for passive, threads_options in ((False, (1, 2, "auto")), (True, (1, 2))):
        for contended in (False, True):
            for threads in threads_options:
                r = measure(threads, passive, contended, args)
                rows.append((passive, contended, threads, r))
                print(f"wait {'passive' if passive else 'default'}, {'contended' if contended else 'alone'}, "
                      f"{threads} thread(s) -> {r['threads']}: {r['median_s']:.3f} s/step", file=sys.stderr, flush=True)
    best_alone = min(r["median_s"] for p, c, t, r in rows if not c)
    lines = [
        "# Torch threads on a shared CPU",
        "",
        f"Machine: {cpu_model()}, os.cpu_count() = {os.cpu_count()}; torch {torch.__version__}; Python "
        f"{sys.version.split()[0]}.",
        "",
        f"PDAE with its defaults, {args.genes} genes, batch 128; median of {args.steps} steps after {args.warmup} "
        "warm-up steps; each row its own process. *Contended*: a second, identical training process with the same "
        "threads and wait policy runs throughout. *auto* is the `pdae` commands' default (`TrainConfig(threads=\"auto\")`, "
        "`pdae_core.train.threads`): each process starts with the cores it finds idle and re-checks every 5 s how many "
        "CPUs other processes keep busy; with *auto*, the competitor is *auto* too, started first on an idle machine. "
        "Threads used: at the end of the measured run. Slowdown: against the fastest run alone.",
        "",
        "| OpenMP wait policy | competing process | threads asked | threads used | s / step | slowdown |",
        "|---|---|---|---|---|---|",
    ]
    for passive, contended, threads, r in rows:
        lines.append(f"| {'PASSIVE' if passive else 'default (spinning)'} | {'yes' if contended else 'no'} | {threads} "
                     f"| {r['threads']} | {r['median_s']:.3f} | {r['median_s'] / best_alone:.2f}x |")
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
