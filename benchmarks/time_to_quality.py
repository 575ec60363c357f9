"""Time-to-quality: PDAE defaults versus the full-grid reference settings.

On `synthetic` (load_dataset("synthetic", seed=SEED), i.e. make_synthetic(seed=SEED);
the first 4 doubles held out, as benchmarks/eval_synthetic.py does), two PDAE runs
with the same seed (same initial weights, same validation split):

* default: the library defaults (sampled grid, lr 1e-3 with cosine decay, 10x lr for
  W, EMA 0.995, batch 128, max_epochs 150) with ``eval_every=1`` so that the curve is
  sampled every epoch. Validation does not change the training trajectory. Patience is
  counted in evaluations, so it is scaled to ``patience * eval_every`` of the library
  defaults (30 x 2 = 60): the run stops after the same number of epochs without
  improvement as a plain ``model.fit``.
* reference: the settings of the reference code: full B x B grid, Adam lr 1e-4
  constant (``lr_schedule="constant"``: the cosine schedule depends on max_epochs), no
  EMA, batch 128, and the same lr for ``W`` as for the networks (PDAE has no knob for
  the 10x lr of W, so this script uses an unregistered PDAEModule subclass whose
  ``optimizer_groups`` returns one group; it is used for the reference run only).
  It trains for ``--reference-budget`` seconds (``time_limit_s``, checked after every
  step on the total clock, validation included), with ``max_epochs=100000`` and a
  patience too large to ever stop it early. What the reference code also lacks but is
  kept here, identical for both runs: stratified batches (8 cells per condition),
  gradient clipping at 10, per-gene input standardisation and the decoder bias
  initialised at the mean profile.

Clocks: "train s" is the record's ``train_seconds`` (wall time spent in training
epochs, validation excluded: validation is identical work for both runs and is done
every epoch here only to sample the curve); "total s" is ``seconds`` (since the
start of training, validation included). Times have the resolution of one epoch.

Definitions (``val_ed``: validation energy distance, unbiased; lower is better):

* The reference has no weight averaging, so its raw validation curve jitters by
  +-15% from epoch to epoch, and "the best value of the run" is then the luckiest
  evaluation, not a level the model holds. Both curves are therefore smoothed the
  same way before anything is read off them: a running median over the last
  ``--window`` (9) evaluations (= epochs; one value per evaluation once 9 exist).
* final(run) = the run's smoothed value at its end.
* within 5% of v: ``smoothed <= v + 0.05 * |v|`` (= 1.05 v for v > 0).
* time to 5% (own): the first evaluation whose smoothed value is within 5% of the
  run's own final value.
* T_ref = the reference's own time to 5%; T_def = the default's time to the first
  smoothed value within 5% of the *reference's* final value (same validation
  quality); speed-up = T_ref / T_def.
* Time to reach fixed levels of the smoothed validation ED, for both runs, and their
  ratios, are printed too (the speed-up as a function of the quality asked for).
* For transparency the raw definition (final = best raw value) is printed as well.
* plateau: a run has plateaued when it reached its own 5% band no later than 75% of
  its training time. A reference that has not plateaued was still improving at the
  budget: T_ref then understates its time to a plateau.

Regenerate (the full run takes about --reference-budget seconds plus the default run):

    python benchmarks/time_to_quality.py --out benchmarks/results/time_to_quality.md \\
        --csv benchmarks/results/time_to_quality.csv

Smoke test: ``python benchmarks/time_to_quality.py --quick`` (reference 20 s, default 5 epochs).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch
from _report import cpu_model, emit

from pdae_core import PDAE
from pdae_core.data.datasets import load_dataset
from pdae_core.models.pdae import PDAEModule
from pdae_core.train.loop import Callback, TrainConfig

N_HOLDOUT = 4  # as benchmarks/eval_synthetic.py
BAND = 0.05
PLATEAU_FRACTION = 0.75


class _EqualLRModule(PDAEModule):
    """PDAEModule with one Adam group: ``W`` learns at the same rate as the networks."""

    def optimizer_groups(self, lr: float) -> list[dict]:
        return [{"params": list(self.parameters()), "lr": lr}]


class _ReferencePDAE(PDAE):
    """PDAE with the equal-lr module (not registered: never saved or loaded)."""

    module_class = _EqualLRModule


class _Progress(Callback):
    """A line on stderr at most every ``every`` seconds, so a long run shows it is alive."""

    def __init__(self, name: str, every: float = 30.0):
        self.name, self.every, self.last = name, every, -math.inf

    def on_evaluation(self, record: dict[str, float]) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            print(f"[{self.name}] epoch {record['epoch']} step {record['step']} "
                  f"train {record['train_seconds']:.1f} s total {record['seconds']:.1f} s "
                  f"val_ed {record.get('val_ed', float('nan')):.4f}", file=sys.stderr, flush=True)


def within(value: float, target: float) -> bool:
    return value <= target + BAND * abs(target)


def first_within(records: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first record whose val_ed is within 5% of ``target``, or None."""
    return next((r for r in records if within(r["val_ed"], target)), None)


def fmt_s(r: dict[str, float] | None, key: str = "train_seconds") -> str:
    return "not reached" if r is None else f"{r[key]:.1f}"


def fmt_ratio(a: dict[str, float] | None, b: dict[str, float] | None, key: str = "train_seconds") -> str:
    if a is None or b is None or b[key] <= 0:
        return "n/a"
    return f"{a[key] / b[key]:.2f}x"


def smoothed(records: list[dict[str, float]], window: int) -> list[dict[str, float]]:
    """The records from the ``window``-th on, with ``val_ed`` replaced by the running
    median of the last ``window`` raw values (``raw_val_ed`` keeps the raw one)."""
    vals = [r["val_ed"] for r in records]
    out = []
    for i in range(window - 1, len(records)):
        out.append({**records[i], "raw_val_ed": vals[i], "val_ed": float(np.median(vals[i - window + 1 : i + 1]))})
    return out


def first_below(records: list[dict[str, float]], level: float) -> dict[str, float] | None:
    return next((r for r in records if r["val_ed"] <= level), None)


def summarize(records: list[dict[str, float]], raw: bool = False) -> dict:
    """final = the best raw value (``raw``) or the last smoothed value."""
    best = min(r["val_ed"] for r in records)
    final = best if raw else records[-1]["val_ed"]
    own = first_within(records, final)
    total_train = records[-1]["train_seconds"]
    return {
        "best": final,
        "best_epoch": next(r["epoch"] for r in records if r["val_ed"] == best),
        "last": records[-1]["val_ed"],
        "own": own,
        "plateau": own is not None and own["train_seconds"] <= PLATEAU_FRACTION * total_train,
        "epochs": records[-1]["epoch"],
        "steps": records[-1]["step"],
        "train_s": total_train,
        "total_s": records[-1]["seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference-budget", type=float, default=1800.0,
                    help="wall-clock seconds given to the reference run (time_limit_s)")
    ap.add_argument("--default-max-epochs", type=int, default=None,
                    help=f"max_epochs of the default run (library default: {TrainConfig().max_epochs})")
    ap.add_argument("--quick", action="store_true", help="smoke test: reference 20 s, default 5 epochs")
    ap.add_argument("--accelerator", default="cpu", help="the claim is about CPUs (default: cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--out", default=None, help="write the markdown report here")
    ap.add_argument("--csv", default=None, help="write both runs' validation records here")
    ap.add_argument("--from-csv", default=None, metavar="CSV",
                    help="no training: rebuild the report from the records of an earlier run's --csv")
    ap.add_argument("--window", type=int, default=9, help="running-median window (evaluations) for the curves")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.2, 0.15, 0.12, 0.1, 0.09, 0.085, 0.08],
                    help="smoothed validation ED levels for the time-to-level table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = 20.0 if args.quick else args.reference_budget
    lib = TrainConfig()
    default_epochs = 5 if args.quick else (args.default_max_epochs or lib.max_epochs)
    default_patience = lib.patience * lib.eval_every  # same horizon in epochs as a plain fit

    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    adata = load_dataset("synthetic", seed=args.seed)
    doubles = [c for c in adata.obs["condition"].cat.categories if "+" in c]
    holdout = doubles[:N_HOLDOUT]

    runs = {
        "default": (PDAE, {}, {"max_epochs": default_epochs, "eval_every": 1, "patience": default_patience}),
        "reference": (
            _ReferencePDAE,
            {"grid": "full"},
            {"lr": 1e-4, "lr_schedule": "constant", "ema_decay": None, "batch_size": 128, "max_epochs": 100_000,
             "eval_every": 1, "patience": 10**9, "time_limit_s": budget},
        ),
    }
    records: dict[str, list[dict[str, float]]] = {}
    stopped: dict[str, str] = {}
    if args.from_csv:
        with open(args.from_csv, newline="") as f:
            for row in csv.DictReader(f):
                rec = {k: float(v) for k, v in row.items() if k != "run"}
                rec["epoch"], rec["step"] = int(rec["epoch"]), int(rec["step"])
                records.setdefault(row["run"], []).append(rec)
        stopped = {name: f"(records read from {args.from_csv})" for name in records}
    for name, (cls, model_cfg, train_cfg) in runs.items():
        if args.from_csv:
            break
        print(f"[{name}] model {model_cfg or 'defaults'}, train {train_cfg}", file=sys.stderr, flush=True)
        model = cls.from_anndata(adata, "condition", "control", seed=args.seed, **model_cfg)
        hist = model.fit(adata, holdout=holdout, seed=args.seed, accelerator=args.accelerator,
                         callbacks=[_Progress(name)], **train_cfg)
        recs = [r for r in hist.records if "val_ed" in r]
        if not recs:
            raise SystemExit(f"{name}: no validation records")
        records[name] = recs
        last_epoch = recs[-1]["epoch"]
        if hist.stopped_early:
            stopped[name] = f"early stop (patience {train_cfg['patience']}) at epoch {last_epoch}"
        elif last_epoch >= train_cfg["max_epochs"]:
            stopped[name] = f"max_epochs {train_cfg['max_epochs']}"
        else:
            stopped[name] = f"time limit {budget:.0f} s at epoch {last_epoch}"
        print(f"[{name}] done: {hist.steps} steps, {hist.seconds:.1f} s, best val_ed {hist.best_val:.4f}",
              file=sys.stderr, flush=True)
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None

    window = 2 if args.quick else args.window
    smooth = {name: smoothed(recs, window) for name, recs in records.items()}
    raw = {name: summarize(recs, raw=True) for name, recs in records.items()}
    s = {name: summarize(recs) for name, recs in smooth.items()}
    d, r = s["default"], s["reference"]
    t_ref = r["own"]
    t_def = first_within(smooth["default"], r["best"])
    t_ref_to_def = first_within(smooth["reference"], d["best"])  # the other direction, for information
    raw_t_def = first_within(records["default"], raw["reference"]["best"])

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    load = (f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end" if load_start and load_end else "n/a")
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "n/a"
    lines = [
        "## Time to quality: PDAE defaults vs full-grid reference settings",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.platform()}; CPU {cpu_model()}; os.cpu_count() {os.cpu_count()} "
        f"(usable by this process: {affinity}); torch.get_num_threads() {torch.get_num_threads()}; "
        f"torch {torch.__version__}; Python {platform.python_version()}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; 1-min load average {load}.",
        "",
        f"Data: synthetic (make_synthetic(seed={args.seed})), {adata.n_obs} cells x {adata.n_vars} genes; "
        f"held out {', '.join(holdout)}; seed {args.seed} for both runs (same initial weights and validation split).",
        "",
        f"- default: library defaults (sampled grid, lr 1e-3 cosine, 10x lr for W, EMA {lib.ema_decay}, batch "
        f"{lib.batch_size}), max_epochs {default_epochs}, eval_every 1, patience {default_patience}; "
        f"stopped by {stopped['default']}.",
        f"- reference: full grid, lr 1e-4 constant, same lr for W, no EMA, batch 128, budget {budget:.0f} s, "
        f"eval_every 1, no early stop; stopped by {stopped['reference']}.",
        "",
        "Times are training wall time (validation excluded) with total time (validation included) in "
        f"parentheses, in seconds. Validation curves are running medians over {window} evaluations (epochs); "
        f"final = the smoothed value at the end of the run; within 5% of v: smoothed val_ed <= v + {BAND} |v|.",
        "",
        "| run | epochs | steps | train s (total s) | final (smoothed) val ED | best raw epoch | last raw val ED | "
        "time to 5% of own final | plateaued |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("default", "reference"):
        x = s[name]
        own = x["own"]
        lines.append(
            f"| {name} | {x['epochs']} | {x['steps']} | {x['train_s']:.1f} ({x['total_s']:.1f}) | {x['best']:.4f} | "
            f"{x['best_epoch']} | {records[name][-1]['val_ed']:.4f} | {fmt_s(own)} ({fmt_s(own, 'seconds')}), "
            f"epoch {own['epoch']} | "
            f"{'yes' if x['plateau'] else 'no'} |"
        )
    lines += [
        "",
        "| cross-run | value |",
        "|---|---|",
        f"| T_ref: reference to within 5% of its final ({r['best']:.4f}) | {fmt_s(t_ref)} ({fmt_s(t_ref, 'seconds')}) |",
        f"| T_def: default to within 5% of the reference's final | {fmt_s(t_def)} ({fmt_s(t_def, 'seconds')})"
        + (f", epoch {t_def['epoch']}" if t_def else "") + " |",
        f"| **speed-up T_ref / T_def** (train clock) | **{fmt_ratio(t_ref, t_def)}** |",
        f"| speed-up T_ref / T_def (total clock) | {fmt_ratio(t_ref, t_def, 'seconds')} |",
        f"| ratio of own times to 5% (reference / default) | {fmt_ratio(r['own'], d['own'])} |",
        f"| reference to within 5% of the default's final ({d['best']:.4f}) | {fmt_s(t_ref_to_def)} |",
        f"| default final / reference final | {d['best'] / r['best']:.3f} |" if r["best"] > 0 else
        "| default final / reference final | n/a (reference final <= 0) |",
        "",
        "Time to reach a level of the smoothed validation ED (train clock, seconds):",
        "",
        "| level | default | reference | reference / default |",
        "|---|---|---|---|",
    ]
    for level in args.levels:
        a, b = first_below(smooth["default"], level), first_below(smooth["reference"], level)
        lines.append(f"| {level:g} | {fmt_s(a)} | {fmt_s(b)} | {fmt_ratio(b, a)} |")
    rd, rr = raw["default"], raw["reference"]
    lines += [
        "",
        f"Raw definition (final = the best single evaluation): default {rd['best']:.4f} (epoch {rd['best_epoch']}), "
        f"reference {rr['best']:.4f} (epoch {rr['best_epoch']}); reference to within 5% of its raw best: "
        f"{fmt_s(rr['own'])} s; default to within 5% of the reference's raw best: {fmt_s(raw_t_def)}"
        + (f" s; ratio {fmt_ratio(rr['own'], raw_t_def)}." if raw_t_def else "."),
        "",
    ]
    notes = []
    if not r["plateau"]:
        notes.append(
            f"The reference had NOT plateaued within its {budget:.0f} s budget (it entered the 5% band of its best "
            f"only after {PLATEAU_FRACTION:.0%} of its training time). Its final value is its value at the budget: "
            "T_ref is a lower bound on its time to a plateau, and the speed-up is measured to the level it had "
            "reached at the budget (a lower bound in that sense; a stricter target would also take the default "
            "longer)."
        )
    if not d["plateau"]:
        notes.append("The default run had not plateaued by the end of its run (same criterion).")
    if t_def is None:
        notes.append(
            f"The default never came within 5% of the reference's final value ({r['best']:.4f}; its own best is "
            f"{d['best']:.4f}): no speed-up can be claimed at the reference's quality."
        )
    elif d["best"] > r["best"]:
        notes.append("The default's best is worse than the reference's final value (but within 5% of it).")
    if args.quick:
        notes.append("--quick: a smoke test with tiny budgets; the numbers say nothing about the claim.")
    lines += [f"Note: {n}" for n in notes]
    emit("\n".join(lines), args.out)

    if args.csv and not args.from_csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["run", "epoch", "step", "train_seconds", "seconds", "val_ed"])
            for name, recs in records.items():
                for rec in recs:
                    w.writerow([name, rec["epoch"], rec["step"], f"{rec['train_seconds']:.4f}",
                                f"{rec['seconds']:.4f}", f"{rec['val_ed']:.6f}"])


if __name__ == "__main__":
    main()
