"""Three ways to lift the non-additive Pearson of the interaction benchmark, none of which
reaches the issue's 0.60: mixing the partners baseline into the ensemble's profile, recalibrating
each gene on the training doubles, and predicting with members refitted on all training doubles.

On the folds of ``pdae benchmark --dataset norman19_pseudobulk --task interactions`` (5 folds of
the 126 doubles with both singles, seeds 0-2), each fold:

* fits the benchmark's ``pdae_ensemble`` (``PDAEEnsembleProfile``, 5 cross-fitted members, the same
  seed) and keeps its out-of-fold predictions of the training doubles and its members' predictions
  of the held-out doubles;
* fits 5 more members on *every* training profile (seeds ``1000 + 5 seed + m``, the ensemble's
  settings, its chosen source, weights at its chosen step): the ``full`` ensemble;
* fits ``PartnerProfile`` (the ``partners`` baseline).

``--report`` then scores the held-out doubles' non-additive part ``dAB - dA - dB`` (Pearson over
genes with the observed one, per double, mean over seeds) of:

* ``ensemble``: the cross-fitted members' mean (the benchmark's ``pdae_ensemble``);
* ``stacked``: the ensemble plus ``beta (dA + dB)``, beta by the out-of-fold Pearson of the training
  doubles (the benchmark's ``pdae_stacked`` profile);
* ``mix``: the ensemble's non-additive part, ``dA + dB`` and the partners baseline's two means
  ``P`` and ``G``, combined by least squares over genes and the training doubles (their out-of-fold
  ensemble predictions, their leave-one-out ``P`` and ``G``);
* ``per_gene``: per gene, a ridge regression of the training doubles' observed non-additive part on
  the ensemble's out-of-fold one and ``dA + dB``, shrunk towards ``(1, beta)`` (the shrinkage chosen by
  5-fold cross-validation on the training doubles): genes whose predicted departure has not matched the
  observed one count less (the benchmark's ``pdae_stacked`` profile since this check; ``stacked`` is
  its profile before);
* ``partners``: the baseline alone;
* ``full``: the refitted members' mean; ``both``: all 10 members;

with the Spearman of magnitude and normalised residual per seed for ``ensemble`` / ``full`` /
``both``, and paired 95% bootstrap intervals over doubles. One fold takes about 3.5 minutes on one
thread; run seeds side by side with ``--threads 1``::

    python benchmarks/nonadditive_mix.py --seed 0 --threads 1 --rows benchmarks/results/nonadditive_mix/rows &
    python benchmarks/nonadditive_mix.py --seed 1 --threads 1 --rows benchmarks/results/nonadditive_mix/rows
    python benchmarks/nonadditive_mix.py --seed 2 --threads 1 --rows benchmarks/results/nonadditive_mix/rows
    python benchmarks/nonadditive_mix.py --report --rows benchmarks/results/nonadditive_mix/rows \\
        --out benchmarks/results/nonadditive_mix.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import emit  # noqa: E402

N_MEMBERS = 5


def _profiles(data_dir: str | None):
    from pdae_core.data.datasets import load_dataset
    from pdae_core.data.defaults import dataset_defaults
    from pdae_core.eval.pseudobulk import profiles_from_anndata

    raw = load_dataset("norman19_pseudobulk", data_dir=data_dir)
    meta = dataset_defaults(raw)
    return profiles_from_anndata(raw, perturbation_key=meta.get("perturbation_key") or "condition",
                                 control_label=meta.get("control_label") or "control")


def _full_members(ens, train, held, seed: int) -> np.ndarray:
    """5 members trained on every training profile, with the ensemble's settings, source and step."""
    from pdae_core.eval.pseudobulk.models import PDAEProfile

    preds = []
    for m in range(N_MEMBERS):
        member = PDAEProfile(seed=1000 + N_MEMBERS * seed + m, source=ens.source_, **ens.member_kw)
        member.perturbations_ = list(train.perturbations)
        snaps: list[dict] = []

        def keep(module, X, L, snaps=snaps) -> float:
            snaps.append({k: v.detach().clone() for k, v in module.state_dict().items()})
            return 0.0

        module, X, L, curve = member._train(train, ens.member_kw["latent_dim"], validate=keep)
        module.load_state_dict(snaps[[s for s, _ in curve].index(ens.step_)])
        member.module_, member.X_, member.L_ = module, X, L
        preds.append(member.predict(held.labels))
    return np.stack(preds)


def run_seed(seed: int, folds: list[int], rows: Path, threads: int | None, data_dir: str | None,
             full: bool = True, double_weight: int = 1) -> None:
    """Fit each fold's ensemble (and, with ``full``, the members refitted on every training profile)
    into ``rows/seed<S>_fold<F>.npz``; a fold already there is skipped. ``double_weight``: the
    members' (:class:`~pdae_core.eval.pseudobulk.PDAEProfile`)."""
    import torch

    from pdae_core.eval.pseudobulk.interaction_models import PDAEEnsembleProfile
    from pdae_core.eval.pseudobulk.profiles import double_folds, train_conditions

    if threads:
        torch.set_num_threads(threads)
    P = _profiles(data_dir)
    dealt = double_folds(P, k=5, seed=seed)
    rows.mkdir(parents=True, exist_ok=True)
    for f in folds:
        out = rows / f"seed{seed}_fold{f}.npz"
        if out.exists():
            continue
        t0 = time.perf_counter()
        train, held = P.subset(train_conditions(P, dealt[f])), P.subset(dealt[f])
        ens = PDAEEnsembleProfile(n_members=N_MEMBERS, seed=seed, double_weight=double_weight).fit(train)
        extra = {"full": _full_members(ens, train, held, seed)} if full else {}
        np.savez(out.with_suffix(".tmp.npz"), oof=ens.oof_, calibration=np.array(ens.calibration_doubles_),
                 test=np.array(dealt[f]), members=ens.predict_members(held.labels), step=ens.step_,
                 source=ens.source_, **extra)
        out.with_suffix(".tmp.npz").replace(out)
        print(f"seed {seed} fold {f}: {time.perf_counter() - t0:.0f} s (step {ens.step_}, source {ens.source_})",
              flush=True)


def score(rows: Path, data_dir: str | None) -> pd.DataFrame:
    """One row per (seed, held-out double): the non-additive Pearson of each prediction and the
    observed and predicted magnitude and residual of ensemble / full / both."""
    from pdae_core.eval.departure import pearson_rows
    from pdae_core.eval.departure_weights import best_beta, choose_gene_shrink, gene_weights
    from pdae_core.eval.pseudobulk.interaction_models import (
        PartnerProfile,
        PDAEStackedRegression,
        single_deltas,
    )
    from pdae_core.eval.pseudobulk.interaction_scores import double_figures
    from pdae_core.eval.pseudobulk.profiles import train_conditions

    P = _profiles(data_dir)
    betas = PDAEStackedRegression().betas
    out = []
    for path in sorted(rows.glob("seed*_fold*.npz")):
        z = np.load(path)
        seed, fold = (int(t.removeprefix(pre)) for t, pre in zip(path.stem.split("_"), ("seed", "fold")))
        test, cal = [str(d) for d in z["test"]], [str(d) for d in z["calibration"]]
        train = P.subset(train_conditions(P, test))
        S_tr = np.vstack([np.add(*single_deltas(train, d)) for d in cal])
        S_te = np.vstack([np.add(*single_deltas(train, d)) for d in test])
        na_tr = train.deltas[train.index(cal)] - S_tr
        na_te = P.deltas[P.index(test)] - S_te
        ens_tr, ens_te = z["oof"] - S_tr, z["members"].mean(0) - S_te
        partners = PartnerProfile().fit(train)
        order = [partners.conditions_.index(d) for d in cal]
        _, Pp_tr, G_tr = (f[order] for f in partners.train_features_)
        _, Pp_te, G_te = partners.features(P.subset(test).labels)
        beta = best_beta(ens_tr, S_tr, na_tr, betas)
        shrink, _ = choose_gene_shrink(ens_tr, S_tr, na_tr, betas)
        gene_w, gene_v = gene_weights(ens_tr, S_tr, na_tr, beta, shrink)
        per_gene = gene_w * ens_te + gene_v * S_te
        X = np.stack([f.ravel() for f in (ens_tr, S_tr, Pp_tr, G_tr)], axis=1)
        coef = np.linalg.lstsq(X, na_tr.ravel(), rcond=None)[0]
        mix = np.tensordot(coef, np.stack([ens_te, S_te, Pp_te, G_te]), axes=1)
        na = {"ensemble": ens_te, "stacked": ens_te + beta * S_te, "mix": mix, "per_gene": per_gene,
              "partners": partners.predict(P.subset(test).labels) - S_te,
              "full": z["full"].mean(0) - S_te,
              "both": np.concatenate([z["members"], z["full"]]).mean(0) - S_te}
        r = {k: pearson_rows(v, na_te) for k, v in na.items()}
        for j, d in enumerate(test):
            a, b = single_deltas(train, d)
            obs = double_figures(a, b, P.deltas[P.index([d])[0]], "lstsq")
            row = {"seed": seed, "fold": fold, "double": d, "shrink": shrink, "magnitude_obs": obs["magnitude"],
                   "residual_obs": obs["normalised_residual"], **{f"na_{k}": float(v[j]) for k, v in r.items()}}
            for k in ("ensemble", "full", "both"):
                fig = double_figures(a, b, na[k][j] + S_te[j], "lstsq")
                row[f"magnitude_{k}"], row[f"residual_{k}"] = fig["magnitude"], fig["normalised_residual"]
            out.append(row)
    return pd.DataFrame(out)


def _boot(df: pd.DataFrame, fn, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """fn(frame) -> figure; mean over seeds; 95% interval over the doubles every seed scored,
    resampled (the same resample for every seed)."""
    by = {s: g.set_index("double") for s, g in df.groupby("seed")}
    doubles = sorted(set.intersection(*(set(g.index) for g in by.values())))
    by = {s: g.loc[doubles].reset_index() for s, g in by.items()}
    point = float(np.mean([fn(g) for g in by.values()]))
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(doubles), len(doubles))
        reps.append(np.mean([fn(g.iloc[pick]) for g in by.values()]))
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return point, float(lo), float(hi)


def report(df: pd.DataFrame) -> str:
    n_seeds, n = df["seed"].nunique(), df.groupby("seed").size().min()
    lines = ["# Mixing the partners baseline into the ensemble, and members refitted on all training doubles",
             "", f"norman19_pseudobulk, the interaction benchmark's folds: {n_seeds} seed(s), {n} held-out doubles "
             "each; mean over seeds, [95% bootstrap interval over doubles].", "",
             "| prediction | non-additive Pearson | Spearman magnitude | Spearman normalised residual |",
             "|---|---|---|---|"]
    for k in ("ensemble", "stacked", "mix", "per_gene", "partners", "full", "both"):
        na = _boot(df, lambda g, k=k: g[f"na_{k}"].mean())
        cells = [f"{na[0]:.3f} [{na[1]:.3f}, {na[2]:.3f}]"]
        for m in ("magnitude", "residual"):
            if f"{m}_{k}" in df:
                v = _boot(df, lambda g, m=m, k=k: spearmanr(g[f"{m}_obs"], g[f"{m}_{k}"])[0])
                cells.append(f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]")
            else:
                cells.append("n/a")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences of the non-additive Pearson (same resampled doubles):", "",
              "| difference | value |", "|---|---|"]
    for a, b in (("mix", "stacked"), ("mix", "ensemble"), ("per_gene", "stacked"), ("full", "ensemble"),
                 ("both", "ensemble"),
                 ("ensemble", "partners"), ("stacked", "partners")):
        v = _boot(df, lambda g, a=a, b=b: (g[f"na_{a}"] - g[f"na_{b}"]).mean())
        lines.append(f"| {a} - {b} | {v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}] |")
    counts = df.groupby(["seed", "fold"])["shrink"].first().value_counts().sort_index()
    lines += ["", "per_gene shrinkage chosen on the training doubles (x median sum of squares; folds): "
              + ", ".join(f"{k:g} ({v})" for k, v in counts.items())]
    return "\n".join(lines)


def fold_cli(doc: str, run, score_rows, report_rows, rows_default: str, extra: dict[str, dict] | None = None) -> None:
    """The command line of a per-fold check: fit ``--seed``'s ``--folds`` into ``--rows``
    (``run(seed, folds, rows, threads, data_dir, **extra_values)``), or ``--report`` them
    (``report_rows(score_rows(rows, data_dir))``, printed and written to ``--out``). ``extra``:
    more options of the fit, ``{"--name": argparse keywords}``, passed to ``run`` by name."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rows", type=Path, default=Path(rows_default))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--report", action="store_true", help="score the rows instead of fitting")
    ap.add_argument("--out", default=None, help="--report: write the table here too")
    for flag, kw in (extra or {}).items():
        ap.add_argument(flag, **kw)
    args = ap.parse_args()
    if args.report:
        emit(report_rows(score_rows(args.rows, args.data_dir)), args.out)
    else:
        values = {f.lstrip("-").replace("-", "_"): getattr(args, f.lstrip("-").replace("-", "_")) for f in extra or {}}
        run(args.seed, [int(f) for f in args.folds.split(",")], args.rows, args.threads, args.data_dir, **values)


def main() -> None:
    fold_cli(__doc__, run_seed, score, report, "benchmarks/results/nonadditive_mix/rows")


if __name__ == "__main__":
    main()
