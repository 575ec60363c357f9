"""The whole default run on a screen of real size, measured end to end (not extrapolated).

On the synthetic raw-count file of ``benchmarks/large_data.py`` (200,000 cells x 5,000 genes by
default; 21 conditions: control, 10 singles, 10 doubles), the commands a user runs, each its own
process, timed and with its peak memory (``ru_maxrss`` of the child):

1. ``pdae preprocess RAW PP`` (normalize_total + log1p, streamed in row chunks, all genes);
2. ``pdae train --data PP --backed --holdout D1,D2 --out CKPT`` with every other setting at its
   default (150 epochs or the 6,000-step budget, whichever is fewer; the gene cap; the decoder's
   gene sample; ``--threads auto``);
3. ``pdae predict CKPT --data PP --target D1 --n-cells N`` (N predicted cells, default 100,000).

    python benchmarks/full_run.py --out benchmarks/results/full_run.md
    python benchmarks/full_run.py --quick        # smoke run: 6,000 cells x 300 genes, 30 steps
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import emit  # noqa: E402
from large_data import file_matches, generate, machine_info  # noqa: E402

GIB = 1024**3


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` (output to ``log``); its wall time and peak RSS (the largest child so far, so
    each command is run from a fresh process of this script: see ``--stage``)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({rc}); see {log}:\n{log.read_text()[-3000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_s": wall, "peak_gib": peak_kib * 1024 / GIB, "command": shlex.join(cmd), "log": str(log)}


def heldout_scores(pp: Path, pred: Path, double: str, n: int = 2000, seed: int = 0) -> dict:
    """Energy distances to ``n`` observed cells of the held-out ``double`` (read from the backed file)."""
    import anndata as ad
    import numpy as np

    from pdae_core.eval.metrics import energy_distance

    rng = np.random.default_rng(seed)
    data = ad.read_h5ad(pp, backed="r")
    conds = data.obs["condition"].astype(str).to_numpy()

    def cells(label: str, k: int) -> np.ndarray:
        idx = np.flatnonzero(conds == label)
        idx = np.sort(rng.choice(idx, min(k, len(idx)), replace=False))
        block = data.X[idx]
        return np.asarray(block.toarray() if hasattr(block, "toarray") else block, dtype=np.float32)

    try:
        obs = cells(double, 2 * n)
        ctrl = cells("control", n)
        a, b = double.split("+")
        shift = cells(a, n).mean(0) + cells(b, n).mean(0) - 2 * ctrl.mean(0)
    finally:
        data.file.close()
    predicted = ad.read_h5ad(pred, backed="r")
    try:
        rows = np.sort(rng.choice(predicted.n_obs, min(n, predicted.n_obs), replace=False))
        p = np.asarray(predicted.X[rows], dtype=np.float32)
    finally:
        predicted.file.close()
    m = len(obs) // 2
    target, half = obs[:m], obs[m: 2 * m]
    return {"n": len(target), "pdae": energy_distance(p, target), "additive": energy_distance(ctrl + shift, target),
            "no change": energy_distance(ctrl, target), "noise floor": energy_distance(half, target)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=200_000)
    ap.add_argument("--genes", type=int, default=5_000)
    ap.add_argument("--predict-cells", type=int, default=100_000)
    ap.add_argument("--workdir", help="where the files go (default: a new temporary folder); matching files are reused")
    ap.add_argument("--train-args", default="", help="extra `pdae train` flags (smoke runs only)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.stage:  # one command, in its own process, so that RUSAGE_CHILDREN is that command's alone
        print(json.dumps(timed(json.loads(args.stage), Path(args.out))))
        return
    if args.quick:
        args.cells, args.genes, args.predict_cells = 6_000, 300, 2_000
        args.train_args = args.train_args or "--steps 30 --epochs 2"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pdae_full_run_"))
    work.mkdir(parents=True, exist_ok=True)
    raw, pp, ckpt, pred = work / "raw.h5ad", work / "pp.h5ad", work / "ckpt", work / "pred.h5ad"
    t0 = time.perf_counter()
    if not file_matches(raw, args.cells, args.genes, 0, 10_000):
        gen = generate(raw, args.cells, args.genes, 0, 10_000)
        print(f"generated {raw} in {time.perf_counter() - t0:.0f} s: {gen}", file=sys.stderr, flush=True)
    import anndata as ad

    backed = ad.read_h5ad(raw, backed="r")
    doubles = [c for c in backed.obs["condition"].cat.categories if "+" in c][:2]
    backed.file.close()
    pdae = [sys.executable, "-m", "pdae_core.cli"]
    steps = {
        "preprocess": [*pdae, "preprocess", str(raw), str(pp), "--overwrite"],
        "train": [*pdae, "train", "--data", str(pp), "--backed", "--holdout", ",".join(doubles), "--out", str(ckpt),
                  "--overwrite", "-q", *shlex.split(args.train_args)],
        "predict": [*pdae, "predict", str(ckpt), "--data", str(pp), "--target", doubles[0], "--n-cells",
                    str(args.predict_cells), "--out", str(pred)],
    }
    results = {}
    for name, cmd in steps.items():
        out = subprocess.run([sys.executable, __file__, "--stage", json.dumps(cmd), "--out", str(work / f"{name}.log")],
                             capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        print(f"{name}: {results[name]['wall_s']:.0f} s, peak {results[name]['peak_gib']:.2f} GiB", file=sys.stderr,
              flush=True)
    scores = heldout_scores(pp, pred, doubles[0])
    ckpt_info = json.loads(subprocess.run([*pdae, "info", str(ckpt), "--json"], capture_output=True, text=True,
                                          check=True).stdout)
    train_log = (work / "train.log").read_text()
    done = [ln for ln in train_log.splitlines() if ln.startswith(("Done:", "Best validation", "Training ", "The data"))]
    lines = [
        f"# A default run end to end: {args.cells:,} cells x {args.genes:,} genes",
        "",
        f"Machine: {machine_info()}.",
        "",
        f"Synthetic raw counts from `benchmarks/large_data.py`'s generator (21 conditions), held out: "
        f"{', '.join(doubles)}. Each command runs in its own process; wall time and peak RSS of that process.",
        "",
        "| step | command | wall | peak RSS |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        cmd = r["command"].replace(str(work) + "/", "").replace(sys.executable + " -m pdae_core.cli", "pdae")
        lines.append(f"| {name} | `{cmd}` | {r['wall_s'] / 60:.1f} min | {r['peak_gib']:.2f} GiB |")
    total = sum(r["wall_s"] for r in results.values())
    lines += ["", f"Total: **{total / 60:.1f} min** (preprocess + train + predict).", "",
              "What `pdae train` printed:", "", *[f"> {ln}" for ln in done]]
    info = {k: ckpt_info.get(k) for k in ("n_genes", "steps", "epochs_run", "seconds", "best_val_ed", "best_epoch",
                                          "stopped_early", "device")}
    lines += ["", f"Checkpoint (`pdae info --json`): {json.dumps(info)}", "",
              f"Held-out {doubles[0]}: energy distance to {scores['n']:,} of its observed cells (a random "
              f"{scores['n']:,} of each set; lower is better): PDAE {scores['pdae']:.3f}, additive (mean shift of the "
              f"two singles, in gene space) {scores['additive']:.3f}, no change (control cells) {scores['no change']:.3f}, "
              f"noise floor (two halves of the observed cells) {scores['noise floor']:.3f}."]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
