"""The GPU check: every model type trains, predicts and round-trips a checkpoint on a device,
with its training throughput (issue 19 item 4). Run it first whenever a CUDA machine is lent.

For each dataset (``norman19_devel``, the real Norman 2019 slice, and a synthetic file of
``--cells`` cells) and each model type, the model is trained for ``--steps`` optimisation steps
on ``--device`` with one held-out double, then

* **throughput**: cells per second of training (steps x batch size / training seconds);
* **predict**: seconds to predict ``--predict-cells`` cells of the held-out double, and that
  the prediction is finite;
* **round trip**: the checkpoint is saved and loaded back, and the loaded model predicts the
  same cells as the trained one (same seed): the largest absolute difference is printed.

The default PDAE is also trained with ``precision="bf16-mixed"`` and with ``compile=True``.
The per-condition model (``pdae_profile``) runs on the synthetic file's mean profiles. Every
row says what failed instead of stopping the run. Writes a markdown table (``--out``).

    python benchmarks/gpu_check.py --device cuda --out benchmarks/results/gpu.md
    python benchmarks/gpu_check.py --device cpu --smoke     # seconds: what the test suite runs
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import pdae_core as pc
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models.catalog import MODEL_TYPES

CELL_MODELS = [m for m in ("pdae", "samsvae", "sccvae", "fcr") if m in MODEL_TYPES]
VARIANTS = {"fp32": {}, "bf16": {"precision": "bf16-mixed"}, "compile": {"compile": True}}


def synthetic(n_cells: int, n_genes: int):
    adata, _ = make_synthetic(n_perturbations=10, n_doubles=12, n_genes=n_genes, latent_dim=6,
                              cells_per_condition=max(10, n_cells // 23), seed=0)
    return adata


def profiles(adata):
    """Mean profile per condition (the pseudobulk of the synthetic cells)."""
    import anndata as ad
    import pandas as pd

    conds = adata.obs["condition"].astype(str).to_numpy()
    names = list(dict.fromkeys(conds))
    X = np.asarray(adata.X)
    means = np.stack([X[conds == c].mean(0) for c in names]).astype(np.float32)
    return ad.AnnData(means, obs=pd.DataFrame({"condition": names}, index=names), var=adata.var.copy())


def held_out_double(adata) -> str:
    conds = sorted(set(map(str, adata.obs["condition"])))
    return next(c for c in conds if "+" in c)


def check(model_type: str, variant: str, adata, data_name: str, args, device: str) -> dict:
    row = {"data": data_name, "model": model_type, "variant": variant}
    try:
        double = held_out_double(adata)
        model = MODEL_TYPES[model_type].from_anndata(adata, "condition", "control", seed=0)
        opts = {"max_steps": args.steps, "max_epochs": 10**6, "accelerator": device, "eval_every": 10**6,
                "val_fraction": 0.0 if model_type == "pdae_profile" else 0.05, **VARIANTS[variant]}
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        hist = model.fit(adata, holdout=[double], **opts)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        batch = adata.n_obs - 1 if model_type == "pdae_profile" else model.train_config.batch_size
        row.update(steps=hist.steps, seconds=seconds, cells_per_s=hist.steps * batch / max(seconds, 1e-9))
        source = adata[adata.obs["condition"].astype(str) == "control"]
        draws = max(1, -(-args.predict_cells // source.n_obs))  # ceil: cells = source cells x draws
        t0 = time.perf_counter()
        pred = model.predict(source, double, seed=1, n_draws=draws)
        row["predict_s"] = time.perf_counter() - t0
        row["predicted"] = pred.n_obs
        if not np.isfinite(np.asarray(pred.X)).all():
            raise FloatingPointError("the prediction has non-finite values")
        with tempfile.TemporaryDirectory() as d:
            model.save(Path(d) / "ckpt")
            back = pc.load_model(Path(d) / "ckpt", accelerator=device)
            again = back.predict(source, double, seed=1, n_draws=draws)
        row["round_trip_max_diff"] = float(np.abs(np.asarray(again.X) - np.asarray(pred.X)).max())
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001  (a check reports every failure and goes on)
        row["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        if args.verbose:
            traceback.print_exc()
    return row


def device_line(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device))
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:N or cpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cells", type=int, default=200_000, help="cells of the synthetic file")
    ap.add_argument("--genes", type=int, default=2000, help="genes of the synthetic file")
    ap.add_argument("--predict-cells", type=int, default=10_000)
    ap.add_argument("--models", nargs="+", default=[*CELL_MODELS, "pdae_profile"])
    ap.add_argument("--no-real", action="store_true", help="skip norman19_devel")
    ap.add_argument("--smoke", action="store_true",
                    help="a few steps on small data, fp32 and bf16 only: checks that everything runs")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps, args.cells, args.genes, args.predict_cells = 3, 1200, 50, 200
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    datasets = []
    if not args.no_real:
        from pdae_core.data.datasets import load_dataset

        try:
            datasets.append(("norman19_devel", load_dataset("norman19_devel")))
        except Exception as e:  # noqa: BLE001
            print(f"norman19_devel not available ({e}); synthetic data only", file=sys.stderr)
    syn = synthetic(args.cells, args.genes)
    datasets.append((f"synthetic {syn.n_obs:,} x {syn.n_vars:,}", syn))
    rows = []
    for name, adata in datasets:
        for m in args.models:
            if m == "pdae_profile":
                if name.startswith("synthetic"):
                    rows.append(check(m, "fp32", profiles(adata), f"{name} (mean profiles)", args, device))
                continue
            variants = ["fp32"] + (["bf16"] if m == "pdae" else []) + (["compile"] if m == "pdae" and not args.smoke
                                                                       else [])
            for v in variants:
                rows.append(check(m, v, adata, name, args, device))
                print(rows[-1], flush=True)
    lines = [
        f"<!-- generated by: python benchmarks/gpu_check.py {' '.join(sys.argv[1:] if argv is None else argv)} -->",
        "# Device check: train, predict, round-trip, throughput",
        "",
        f"- device: {device} ({device_line(device)}); torch {torch.__version__}; pdae_core {pc.__version__}",
        f"- {args.steps} training steps per model; predict at least {args.predict_cells:,} cells of one held-out double",
        "",
        "| data | model | variant | steps | train s | cells/s | predict s | round-trip max diff | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        def f(k: str, fmt: str, r: dict = r) -> str:
            return format(r[k], fmt) if k in r else "–"
        lines.append(f"| {r['data']} | {r['model']} | {r['variant']} | {f('steps', 'd')} | {f('seconds', '.1f')} | "
                     f"{f('cells_per_s', ',.0f')} | {f('predict_s', '.2f')} | {f('round_trip_max_diff', '.1e')} | "
                     f"{r['status']} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
