"""Peak memory and time on a large synthetic dataset: 200,000 cells x 5,000 genes of raw counts.

Steps, each in its own subprocess so that its peak RSS (``ru_maxrss``) is its own:

1. ``generate``: a synthetic raw-count ``.h5ad`` (CSR, float32) written chunk by chunk,
   never holding the whole matrix: each cell gets a condition (control, 10 singles
   ``P1``..``P10``, 10 doubles ``Pi+Pj``), a latent ``z = N(0, I_8) + sum of its
   perturbations' shifts``, gene rates ``softplus(z A + b)`` times a heavy-tailed
   per-gene scale, rescaled to 2,000-5,000 UMIs per cell, and Poisson counts (about
   10% non-zeros at 5,000 genes). Smaller sizes (``--scaling``) come from the same
   generator: a file of n cells is the first n cells of any larger one.
2. ``inmemory``: ``read_h5ad`` the whole file, ``pdae_core.preprocess`` (scanpy
   normalize_total + log1p, all genes kept), then one epoch of PDAE training on the
   in-memory (sparse) matrix.
3. ``streamed``: ``pdae_core.data.streaming.preprocess_on_disk`` into a new ``.h5ad``,
   opened with ``read_h5ad(..., backed=True)``, then one epoch of PDAE training that
   reads ``X`` from disk one mini-batch at a time; repeated at every ``--scaling``
   size to show that its peak memory does not grow with the number of cells (it is
   bounded by ``TrainConfig.init_max_cells`` and ``val_max_cells``).

Peak RSS per phase (load / preprocess / train) comes from ``VmHWM``, reset before
each phase through ``/proc/self/clear_refs`` (Linux); "baseline" is the RSS right
after the imports. ``--max-steps`` caps training; s/epoch is then extrapolated from
s/step. Regenerate the committed report with:

    python benchmarks/large_data.py --out benchmarks/results/large_data.md

Smoke test (6,000 cells x 300 genes, scaling sizes 2,000 and 4,000):

    python benchmarks/large_data.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import emit  # noqa: E402

MARK = "@@LARGE_DATA_RESULT "
GIB = 1024**3
LATENT = 8
N_SINGLES = 10
N_DOUBLES = 10
GENE_SCALE_SD = 2.7  # log-normal sd of the per-gene scale: ~10% non-zeros at 5,000 genes and ~3,300 UMIs
UMI_MEDIAN, UMI_LO, UMI_HI = 3200.0, 2000.0, 5000.0


# ---------------------------------------------------------------------------------
# memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_kib() -> int:
    now = _status_kib("VmRSS")
    return now if now is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Phases:
    """Seconds and peak RSS (KiB) of the named phases of one stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_kib: dict[str, int] = {}
        self.rss_after_kib: dict[str, int] = {}

    @contextmanager
    def __call__(self, name: str):
        can_reset = reset_peak()
        t0 = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t0
        hwm = _status_kib("VmHWM")
        self.peak_kib[name] = hwm if (can_reset and hwm is not None) else maxrss_kib()
        self.rss_after_kib[name] = rss_kib()
        log(f"{name}: {self.seconds[name]:.1f} s, peak {self.peak_kib[name] / 2**20:.2f} GiB")


def log(msg: str) -> None:
    print(f"[large_data {os.getpid()}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------
# the synthetic generator


class Generator:
    """Condition -> latent -> gene rates -> Poisson counts; the parameters depend on
    ``(seed, n_genes)`` only and cells on ``(seed, chunk index)``, so a smaller file
    is a prefix of a larger one written with the same chunk size."""

    def __init__(self, n_genes: int, seed: int = 0):
        rng = np.random.default_rng([seed, n_genes])
        self.seed = seed
        self.singles = [f"P{i + 1}" for i in range(N_SINGLES)]
        pairs = list(combinations(range(N_SINGLES), 2))
        pick = sorted(rng.choice(len(pairs), size=N_DOUBLES, replace=False))
        self.doubles = [f"P{pairs[k][0] + 1}+P{pairs[k][1] + 1}" for k in pick]
        self.conditions = ["control", *self.singles, *self.doubles]
        W = rng.standard_normal((N_SINGLES, LATENT)) * 3.0 / np.sqrt(LATENT)  # latent shift of each single
        members = [[], *[[i] for i in range(N_SINGLES)], *[list(pairs[k]) for k in pick]]
        self.shift = np.stack([W[m].sum(0) if m else np.zeros(LATENT) for m in members]).astype(np.float32)
        self.A = (rng.standard_normal((LATENT, n_genes)) / np.sqrt(LATENT)).astype(np.float32)
        self.b = rng.normal(-1.0, 0.5, n_genes).astype(np.float32)
        self.scale = np.exp(rng.normal(0.0, GENE_SCALE_SD, n_genes)).astype(np.float32)

    def chunk(self, index: int, n: int):
        """Condition codes (n,) and float32 CSR counts (n x genes) of chunk ``index``."""
        import scipy.sparse as sp

        rng = np.random.default_rng([self.seed, 1, index])
        codes = rng.integers(len(self.conditions), size=n)
        z = rng.standard_normal((n, LATENT), dtype=np.float32) + self.shift[codes]
        rates = np.logaddexp(np.float32(0.0), z @ self.A + self.b)  # softplus, (n, genes) float32
        rates *= self.scale
        umis = np.clip(np.exp(rng.normal(np.log(UMI_MEDIAN), 0.25, n)), UMI_LO, UMI_HI).astype(np.float32)
        rates *= (umis / rates.sum(1))[:, None]
        counts = sp.csr_matrix(rng.poisson(rates).astype(np.float32))
        counts.sort_indices()
        return codes, counts


def generate(path: Path, n_cells: int, n_genes: int, seed: int, chunk: int) -> dict[str, Any]:
    """Write the raw-count ``.h5ad`` at ``path`` chunk by chunk (the way
    ``preprocess_on_disk`` writes its output) and check that anndata opens it."""
    import anndata as ad
    import h5py
    import pandas as pd

    gen = Generator(n_genes, seed)
    codes_all = np.empty(n_cells, dtype=np.int64)
    nnz = 0
    umis = 0.0
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        var = pd.DataFrame(index=pd.Index([f"g{j}" for j in range(n_genes)]))
        ad.io.write_elem(f, "var", var)
        for k, lo in enumerate(range(0, n_cells, chunk)):
            hi = min(n_cells, lo + chunk)
            codes, X = gen.chunk(k, hi - lo)
            codes_all[lo:hi] = codes
            nnz += X.nnz
            umis += float(X.data.sum(dtype=np.float64))
            if lo == 0:
                ad.io.write_elem(f, "X", X)  # resizable: anndata writes CSR with maxshape=(None,)
            else:
                ad.io.sparse_dataset(f["X"]).append(X)
            del X
        conds = np.asarray(gen.conditions, dtype=object)[codes_all]
        obs = pd.DataFrame(
            {
                "condition": pd.Categorical(conds, categories=gen.conditions),
                "n_perturbations": np.array([0 if c == "control" else len(c.split("+")) for c in gen.conditions])[
                    codes_all
                ],
            },
            index=pd.Index([f"c{i}" for i in range(n_cells)]),
        )
        ad.io.write_elem(f, "obs", obs)
        ad.io.write_elem(
            f, "uns", {"large_data_generator": {"cells": n_cells, "genes": n_genes, "seed": seed, "chunk": chunk}}
        )
        for key in ("obsm", "varm", "layers", "obsp", "varp"):
            ad.io.write_elem(f, key, {})
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
    os.replace(tmp, path)
    check = ad.read_h5ad(path, backed="r")
    try:
        if check.shape != (n_cells, n_genes):
            raise RuntimeError(f"{path} reads back as {check.shape}, expected {(n_cells, n_genes)}")
        first = check.X[: min(100, n_cells)]
        if first.shape != (min(100, n_cells), n_genes) or list(check.obs.columns) != ["condition", "n_perturbations"]:
            raise RuntimeError(f"{path} does not read back as written")
    finally:
        check.file.close()
    return {
        "nnz_fraction": nnz / (n_cells * n_genes),
        "umis_per_cell": umis / n_cells,
        "file_bytes": path.stat().st_size,
        "conditions": len(gen.conditions),
    }


def file_matches(path: Path, n_cells: int, n_genes: int, seed: int, chunk: int) -> bool:
    """True when ``path`` is a complete file of this generator with these parameters (reused with --workdir)."""
    import h5py

    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            g = f["uns/large_data_generator"]
            got = {k: int(g[k][()]) for k in ("cells", "genes", "seed", "chunk")}
    except (OSError, KeyError, ValueError):
        return False
    return got == {"cells": n_cells, "genes": n_genes, "seed": seed, "chunk": chunk}


# ---------------------------------------------------------------------------------
# stages (run in child processes)


class _Progress:
    """A pdae_core training Callback (duck-typed) that logs progress to stderr."""

    def __init__(self, every: int = 100):
        self.every = every
        self.steps_per_epoch = 0
        self.t0 = time.perf_counter()

    def on_train_start(self, max_epochs: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.t0 = time.perf_counter()
        log(f"training: {steps_per_epoch} steps per epoch")

    def on_step(self, epoch: int, step: int, losses: dict[str, float]) -> None:
        if step % self.every == 0:
            dt = time.perf_counter() - self.t0
            log(f"step {step}/{self.steps_per_epoch}: {dt:.0f} s, loss {losses.get('loss', float('nan')):.4g}")

    def on_evaluation(self, record: dict[str, float]) -> None: ...

    def on_train_end(self, history: Any) -> None: ...

    def should_stop(self) -> bool:
        return False


def train_one_epoch(adata: Any, args: argparse.Namespace) -> dict[str, Any]:
    from pdae_core import PDAE

    progress = _Progress(every=args.log_every)
    model = PDAE.from_anndata(adata, "condition", "control", seed=0)
    kwargs: dict[str, Any] = {"max_epochs": 1, "eval_every": 1, "accelerator": args.accelerator}
    if args.max_steps is not None:
        kwargs["max_steps"] = args.max_steps
    if args.init_max_cells is not None:
        kwargs["init_max_cells"] = args.init_max_cells
    hist = model.fit(adata, callbacks=[progress], **kwargs)
    loop_s = float(hist.records[-1]["train_seconds"]) if hist.records else hist.seconds
    s_step = loop_s / max(hist.steps, 1)
    # on_train_start's steps per epoch come from a different shuffle than the epoch's own
    # batches and may differ by one: an epoch is complete unless max_steps stopped it
    capped = args.max_steps is not None and hist.steps >= args.max_steps
    return {
        "steps": int(hist.steps),
        "steps_per_epoch": int(progress.steps_per_epoch),
        "loop_seconds": loop_s,
        "fit_seconds": float(hist.seconds),
        "s_per_step": s_step,
        "epoch_seconds": s_step * progress.steps_per_epoch if capped else loop_s,
        "extrapolated": capped,
        "val_ed": float(hist.records[-1].get("val_ed", float("nan"))) if hist.records else float("nan"),
        "device": hist.device,
        "init_max_cells": int(model.train_config.init_max_cells),
        "val_max_cells": int(model.train_config.val_max_cells),
    }


def run_stage(args: argparse.Namespace) -> None:
    import torch

    import pdae_core as pc
    from pdae_core.data.streaming import preprocess_on_disk

    baseline = rss_kib()
    threads = torch.get_num_threads()
    ph = Phases()
    out: dict[str, Any] = {"stage": args.stage, "baseline_kib": baseline}
    raw = Path(args.raw)
    if args.stage == "generate":
        with ph("generate"):
            out.update(generate(raw, args.cells, args.genes, args.seed, args.chunk))
    elif args.stage == "inmemory":
        with ph("load"):
            adata = pc.read_h5ad(raw)
        with ph("preprocess"):
            adata = pc.preprocess(adata)  # the raw AnnData is freed when the name is rebound
        if torch.get_num_threads() != threads:
            # scanpy's numba kernels (OpenMP layer) set the OpenMP thread count to the CPU count, which
            # torch shares: put it back so that both stages train with the same number of threads
            out["threads_after_preprocess"] = torch.get_num_threads()
            log(f"preprocess changed torch's threads from {threads} to {torch.get_num_threads()}: reset")
            torch.set_num_threads(threads)
        with ph("train"):
            out.update(train_one_epoch(adata, args))
        out["shape"] = list(adata.shape)
    elif args.stage == "streamed":
        pp = Path(args.pp)
        with ph("preprocess"):
            preprocess_on_disk(raw, pp)
        with ph("load"):
            adata = pc.read_h5ad(pp, backed=True)
        with ph("train"):
            out.update(train_one_epoch(adata, args))
        out["shape"] = list(adata.shape)
        out["pp_file_bytes"] = pp.stat().st_size
        adata.file.close()
    else:
        raise SystemExit(f"unknown stage {args.stage!r}")
    out.update(
        seconds=ph.seconds,
        phase_peak_kib=ph.peak_kib,
        peak_kib=maxrss_kib(),
        torch_threads=torch.get_num_threads(),
    )
    print(MARK + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------
# the driver


def spawn(stage: str, args: argparse.Namespace, raw: Path, cells: int, pp: Path | None = None) -> dict[str, Any]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--raw", str(raw),
        "--cells", str(cells), "--genes", str(args.genes), "--seed", str(args.seed), "--chunk", str(args.chunk),
        "--accelerator", args.accelerator, "--log-every", str(args.log_every),
    ]
    if pp is not None:
        cmd += ["--pp", str(pp)]
    if args.max_steps is not None:
        cmd += ["--max-steps", str(args.max_steps)]
    if args.init_max_cells is not None:
        cmd += ["--init-max-cells", str(args.init_max_cells)]
    log(f"{stage}, {cells} cells: {' '.join(shlex.quote(c) for c in cmd[1:])}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    results = [line[len(MARK):] for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not results:
        sys.stdout.write(proc.stdout)
        raise SystemExit(f"stage {stage} ({cells} cells) failed with exit status {proc.returncode}")
    res = json.loads(results[-1])
    res["cells"] = cells
    return res


def machine_info() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    ram = "unknown"
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:"))
        ram = f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    threads = os.environ.get("OMP_NUM_THREADS")
    return (
        f"{platform.platform()}; CPU: {cpu}; os.cpu_count() = {os.cpu_count()}; "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s)"
        + (f" (OMP_NUM_THREADS={threads})" if threads else "")
        + f"; RAM {ram}; Python {platform.python_version()}"
    )


def gib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 2**20:.2f}"


def secs(x: float | None) -> str:
    return "-" if x is None else (f"{x:.1f}" if x >= 10 else f"{x:.2f}")


def report(args: argparse.Namespace, gens: list[dict], runs: list[dict], command: str) -> str:
    lines = [
        f"# Large data: {args.cells:,} cells x {args.genes:,} genes" + (" (quick)" if args.quick else ""),
        "",
        f"Machine: {machine_info()}.",
        "",
        f"Command: `{command}`",
        "",
        "Each row is its own process. Peak RSS is `ru_maxrss` of that process; the per-phase peaks are",
        "`VmHWM` reset before each phase; baseline is the RSS after importing numpy, torch and pdae_core.",
        "",
        "## Synthetic raw counts (written chunk by chunk)",
        "",
        "| cells | genes | non-zeros | UMIs / cell | raw file MiB | write s | peak RSS GiB | baseline RSS GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in gens:
        if g.get("reused"):
            lines.append(f"| {g['cells']:,} | {args.genes:,} | (reused file) | | {g['file_bytes'] / 2**20:.0f} | | | |")
            continue
        lines.append(
            f"| {g['cells']:,} | {args.genes:,} | {100 * g['nnz_fraction']:.1f}% | {g['umis_per_cell']:.0f} | "
            f"{g['file_bytes'] / 2**20:.0f} | {secs(g['seconds']['generate'])} | {gib(g['peak_kib'])} | "
            f"{gib(g['baseline_kib'])} |"
        )
    lines += [
        "",
        "## Load, preprocess (normalize_total + log1p, all genes) and train PDAE one epoch",
        "",
        "| stage | cells | genes | load s | preprocess s | train s | steps | s / step | s / epoch | "
        "peak RSS GiB | peak GiB: load / preprocess / train | baseline RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s, p = r["seconds"], r["phase_peak_kib"]
        steps = f"{r['steps']} of ~{r['steps_per_epoch']}" if r["extrapolated"] else str(r["steps"])
        epoch = secs(r["epoch_seconds"]) + (" (extrapolated)" if r["extrapolated"] else "")
        lines.append(
            f"| {r['stage']} | {r['cells']:,} | {args.genes:,} | {secs(s.get('load'))} | {secs(s.get('preprocess'))} | "
            f"{secs(s.get('train'))} | {steps} | {r['s_per_step']:.3f} | {epoch} | {gib(r['peak_kib'])} | "
            f"{gib(p.get('load'))} / {gib(p.get('preprocess'))} / {gib(p.get('train'))} | {gib(r['baseline_kib'])} |"
        )
    if runs:
        r0 = runs[0]
        lines += [
            "",
            "`train s` is `PDAE.from_anndata` + `fit` (setup, input-scaling initialisation, the epoch and one "
            "validation); `s / step` is the epoch loop's time over its steps. Batch 128, "
            f"`init_max_cells` {r0['init_max_cells']:,}, `val_max_cells` {r0['val_max_cells']} per condition, "
            f"device {r0['device']}, {r0['torch_threads']} torch thread(s) while training.",
        ]
        changed = [r for r in runs if "threads_after_preprocess" in r]
        if changed:
            lines += [
                "",
                "`pdae_core.preprocess` (scanpy's numba kernels, OpenMP threading layer) changed torch's thread "
                f"count to {changed[0]['threads_after_preprocess']} in the in-memory stage; the stage set it back "
                "to its starting value before training.",
            ]
        lines += [
            "",
            "Streamed training holds the model, a few batches, the validation cells (at most "
            "`val_max_cells` per condition) and, while it initialises the input scaling, up to "
            "`init_max_cells` dense cells: its peak stops growing once the data has more cells than that.",
        ]
    pps = [f"{r['cells']:,} cells {r['pp_file_bytes'] / 2**20:.0f} MiB" for r in runs if "pp_file_bytes" in r]
    if pps:
        lines += ["", "Preprocessed (log1p, CSR float32) files: " + "; ".join(pps) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=None, help="cells of the main dataset (default 200,000)")
    ap.add_argument("--genes", type=int, default=None, help="genes (default 5,000)")
    ap.add_argument("--scaling", type=int, nargs="*", default=None,
                    help="extra cell counts for the streamed stage (default 50,000 100,000)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: defaults become 6,000 cells x 300 genes, scaling 2,000 4,000, chunk 1,000")
    ap.add_argument("--workdir", default=None, help="where the .h5ad files go (default: a new temp dir under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the .h5ad files (and reuse matching ones)")
    ap.add_argument("--no-inmemory", action="store_true", help="skip the in-memory stage (needs most RAM)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap training steps (default: a full epoch)")
    ap.add_argument("--init-max-cells", type=int, default=None, help="TrainConfig.init_max_cells (default: its default)")
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=None, help="cells per chunk written by the generator (default 10,000)")
    ap.add_argument("--log-every", type=int, default=100, help="log training progress every this many steps")
    ap.add_argument("--out", default=None, help="also write the markdown report here")
    ap.add_argument("--stage", choices=["generate", "inmemory", "streamed"], help=argparse.SUPPRESS)
    ap.add_argument("--raw", help=argparse.SUPPRESS)
    ap.add_argument("--pp", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:
        run_stage(args)
        return
    defaults = (6_000, 300, [2_000, 4_000], 1_000) if args.quick else (200_000, 5_000, [50_000, 100_000], 10_000)
    for name, value in zip(("cells", "genes", "scaling", "chunk"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    sizes = sorted({args.cells, *[n for n in args.scaling if 0 < n]})
    made_dir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="pdae_large_data_", dir="/tmp") if made_dir else args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{args.genes}g_s{args.seed}"
    raw = {n: workdir / f"raw_{n}c_{tag}.h5ad" for n in sizes}
    pp = {n: workdir / f"pp_{n}c_{tag}.h5ad" for n in sizes}
    log(f"work dir {workdir}")
    try:
        gens = []
        for n in sizes:
            if args.keep and file_matches(raw[n], n, args.genes, args.seed, args.chunk):
                log(f"reusing {raw[n]}")
                gens.append({"cells": n, "reused": True, "file_bytes": raw[n].stat().st_size})
            else:
                gens.append(spawn("generate", args, raw[n], n))
        runs = []
        if not args.no_inmemory:
            runs.append(spawn("inmemory", args, raw[args.cells], args.cells))
        for n in sorted(sizes, reverse=True):
            runs.append(spawn("streamed", args, raw[n], n, pp[n]))
        emit(report(args, gens, runs, command), args.out)
    finally:
        if args.keep:
            log(f"kept the files in {workdir}")
        elif made_dir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for p in [*raw.values(), *pp.values()]:
                for q in (p, p.with_name(p.name + ".tmp")):
                    q.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
