"""Peak memory of prediction and of the pair screen as they grow: predicting 10,000 to 100,000 cells
and scoring 1,000 to 5,356 pairs, each measurement its own process (peak RSS = ``ru_maxrss``).

The model: PDAE with the default architecture on ``--genes`` genes and 104 single perturbations
(the size of the full Norman 2019 design), trained for a few steps on synthetic cells and saved
once (memory does not depend on how well it was trained). Prediction moves 2,000 fresh control cells
(``n_draws`` decoder draws each for more cells than that); its output (cells x genes,
float32) is part of its peak, so the table also gives the peak minus the output. ``pdae predict
--n-cells N`` moves the 2,000 cells of a control file ceil(N / 2,000) times and keeps a random N
(N is not a multiple of 2,000 here, so it subsamples), then writes the ``.h5ad``. The pair screen
moves 512 control cells per pair, ``chunk_pairs`` (256) pairs at a time.

    python benchmarks/predict_memory.py --out benchmarks/results/predict_memory.md
    python benchmarks/predict_memory.py --quick     # smoke run: 100 genes, small sizes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GIB = 1024**3


def synthetic(genes: int, per: int):
    from pdae_core.data.synthetic import make_synthetic

    return make_synthetic(n_perturbations=104, n_doubles=0, n_genes=genes, cells_per_condition=per, seed=0)


def worker(args: argparse.Namespace) -> None:
    import anndata as ad
    import numpy as np

    import pdae_core as pc
    from pdae_core.eval.pair_screen import screen_pairs

    model = pc.PerturbationModel.load(args.ckpt)
    adata, truth = synthetic(args.genes, 20)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    t0 = time.perf_counter()
    if args.what == "cli":  # `pdae predict` from a file of 2,000 control cells, subsampling the extra draw
        from pdae_core import cli

        rc = cli.main(["predict", args.ckpt, "--data", str(Path(args.ckpt).parent / "control.h5ad"), "--target",
                       "P1+P2", "--n-cells", str(args.n), "--out", str(Path(args.ckpt).parent / "pred.h5ad")])
        assert rc == 0
        out_gib = args.n * args.genes * 4 / GIB
    elif args.what == "predict":
        n_src = min(2000, args.n)
        ctrl = ad.AnnData(X=truth.sample("control", n_src, seed=1).astype(np.float32), var=adata.var.copy())
        ctrl.obs["condition"] = "control"
        pred = model.predict(ctrl, "P1+P2", n_draws=args.n // n_src, seed=0)
        out_gib = pred.X.nbytes / GIB
    else:
        singles = model.registry.perturbations[: args.n]
        table = screen_pairs(model, adata, singles=singles, n_cells=512, progress_bar=False)
        out_gib = table.memory_usage(deep=True).sum() / GIB
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    print(json.dumps({"seconds": seconds, "peak_gib": peak, "base_gib": base, "out_gib": out_gib}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--cells", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    ap.add_argument("--singles", type=int, nargs="+", default=[46, 72, 104], help="pairs: n (n - 1) / 2")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--what", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.genes, args.cells, args.singles = 100, [1_000, 3_000], [10, 20]
    sys.path.insert(0, str(HERE))
    import torch
    from _report import cpu_model, emit

    import pdae_core as pc

    work = Path(tempfile.mkdtemp(prefix="pdae_predict_memory_"))
    adata, _ = synthetic(args.genes, 20)
    model = pc.PDAE.from_anndata(adata, seed=0)
    model.fit(adata, max_steps=20, accelerator="cpu", progress_bar=False)
    model.save(work / "ckpt")
    ctrl = adata[adata.obs["condition"] == "control"]
    import anndata as ad
    import numpy as np

    _, truth = synthetic(args.genes, 1)
    src = ad.AnnData(X=truth.sample("control", 2000, seed=2).astype(np.float32), var=adata.var.copy())
    src.obs["condition"] = "control"
    src.obs_names = [f"c{i}" for i in range(src.n_obs)]
    src.write_h5ad(work / "control.h5ad")
    del ctrl
    rows = []
    for what, sizes in (("predict", args.cells), ("cli", [n + 1000 for n in args.cells]), ("pairs", args.singles)):
        for n in sizes:
            cmd = [sys.executable, __file__, "--worker", "1", "--ckpt", str(work / "ckpt"), "--n", str(n), "--what", what,
                   "--genes", str(args.genes)]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            size = n * (n - 1) // 2 if what == "pairs" else n
            rows.append((what, size, r))
            print(what, size, r, file=sys.stderr, flush=True)
    lines = [
        "# Prediction and the pair screen: peak memory as they grow",
        "",
        f"Machine: {cpu_model()}, os.cpu_count() = {os.cpu_count()}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} thread(s); Python {sys.version.split()[0]}. PDAE, default architecture, "
        f"{args.genes:,} genes, 104 perturbations; each row its own process.",
        "",
        "| task | size | seconds | peak RSS GiB | after loading GiB | output GiB | peak - output GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for what, size, r in rows:
        name = {"predict": "`model.predict` (cells)", "cli": "`pdae predict --n-cells` (cells)",
                "pairs": "pair screen (pairs)"}[what]
        lines.append(f"| {name} | {size:,} | {r['seconds']:.1f} | {r['peak_gib']:.2f} | {r['base_gib']:.2f} | "
                     f"{r['out_gib']:.3f} | {r['peak_gib'] - r['out_gib']:.2f} |")
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
