"""The mean-level benchmark: :func:`run_pseudobulk_benchmark` scores every held-out
double per fold and seed, :func:`summarise_pseudobulk` averages per model,
:func:`paired_differences` compares each model with a reference and
:func:`pseudobulk_markdown` writes the tables."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ...errors import DataError
from ..metrics import pearson_delta, r2_delta, top_de_genes
from .models import PROFILE_MODELS, ProfileModel
from .profiles import ProfileSet, double_folds, train_conditions

__all__ = ["run_pseudobulk_benchmark", "summarise_pseudobulk", "paired_differences", "pseudobulk_markdown"]


def run_pseudobulk_benchmark(
    profiles: ProfileSet,
    models: Sequence[str] | Mapping[str, Callable[[int], ProfileModel]] = (
        "additive", "scaled_additive", "linear", "pdae"),
    k: int = 5,
    seeds: Sequence[int] = (0,),
    k_de: int = 20,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """k-fold benchmark over the doubles with both singles measured.

    For each seed, the folds are :func:`double_folds` ``(profiles, k, seed)`` and
    every model is built by its factory with that seed (so the spread over seeds
    covers both the split and the training randomness). ``models``: names from
    :data:`PROFILE_MODELS` or a mapping ``name -> factory(seed)``.

    Returns one row per (model, seed, fold, held-out double) with ``pearson_delta``
    (all genes), ``pearson_delta_de`` (the double's ``k_de`` genes of largest
    observed ``|delta|``), ``r2_delta`` (all genes), ``mean_l2`` (Euclidean distance
    between predicted and observed delta) and ``fit_seconds`` (the fold's fit time).
    """
    if isinstance(models, Mapping):
        factories = dict(models)
    else:
        unknown = [m for m in models if m not in PROFILE_MODELS]
        if unknown:
            raise DataError(f"Unknown model(s) {unknown}; known: {', '.join(PROFILE_MODELS)}.")
        factories = {m: PROFILE_MODELS[m] for m in models}
    if not factories:
        raise DataError("No models to benchmark.")
    zero = np.zeros(profiles.n_genes)
    rows = []
    for seed in seeds:
        folds = double_folds(profiles, k=k, seed=int(seed))
        for f, test in enumerate(folds):
            train = profiles.subset(train_conditions(profiles, test))
            held = profiles.subset(test)
            for name, factory in factories.items():
                t0 = time.perf_counter()
                model = factory(int(seed)).fit(train)
                fit_s = time.perf_counter() - t0
                pred = model.predict(held.labels)
                for cond, p, o in zip(held.conditions, pred, held.deltas):
                    de = top_de_genes(o, zero, k=k_de)
                    rows.append({
                        "model": name, "seed": int(seed), "fold": f, "condition": cond,
                        "pearson_delta": pearson_delta(p, o, zero), "pearson_delta_de": pearson_delta(p, o, zero, de),
                        "r2_delta": r2_delta(p, o, zero), "mean_l2": float(np.linalg.norm(p - o)),
                        "fit_seconds": fit_s,
                    })
                if progress is not None:
                    r = pd.DataFrame(rows[-len(test):])
                    progress(
                        f"seed {seed} fold {f + 1}/{len(folds)} {name}: {len(test)} doubles, Pearson delta "
                        f"{r.pearson_delta.mean():.3f} (top-{k_de} {r.pearson_delta_de.mean():.3f}), fit {fit_s:.1f} s"
                    )
    df = pd.DataFrame(rows)
    df.attrs["k_de"] = int(k_de)
    return df


def summarise_pseudobulk(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean Pearson delta (all genes and top DE), R2 delta and L2 over the
    held-out doubles, with the sd over seeds of the per-seed means (``sd_over ==
    "seeds"``) or, with one seed, the sd over doubles (``sd_over == "doubles"``);
    ``fit_seconds``: mean fit time per fold."""
    metrics = ["pearson_delta", "pearson_delta_de", "r2_delta", "mean_l2"]
    out = []
    for name, g in df.groupby("model", sort=False):
        per_seed = g.groupby("seed")[metrics].mean()
        several = len(per_seed) > 1
        row: dict[str, object] = {
            "model": name, "n_doubles": g.condition.nunique(), "n_seeds": len(per_seed),
            "sd_over": "seeds" if several else "doubles",
        }
        for m in metrics:
            row[f"{m}_mean"] = float(per_seed[m].mean())
            row[f"{m}_sd"] = float(per_seed[m].std(ddof=1)) if several else float(g[m].std(ddof=1))
        row["fit_seconds"] = float(g.groupby(["seed", "fold"]).fit_seconds.first().mean())
        out.append(row)
    s = pd.DataFrame(out)
    s.attrs["k_de"] = df.attrs.get("k_de", 20)
    return s


_TIE = 1e-12  # differences of correlations below this are rounding


def paired_differences(df: pd.DataFrame, reference: str = "additive", n_boot: int = 2000,
                       seed: int = 0) -> pd.DataFrame:
    """Per model other than ``reference``: the mean over doubles (and seeds) of its
    Pearson delta minus the reference's, on all genes and on the top DE genes, with a
    95% bootstrap interval over doubles (seeded: the same table every run, each model resampling
    the same doubles, so a model's interval does not depend on the other models listed) and the
    number of doubles on which the model is higher (by more than ``1e-12``: a model whose
    prediction is the reference's times a positive scale, such as ``scaled_additive``,
    has the same Pearson delta up to rounding, which is a tie, not a win)."""
    rows = []
    if reference not in set(df["model"]):
        return pd.DataFrame(rows)
    keys = ["seed", "condition"]
    ref = df[df.model == reference].set_index(keys)
    for name, g in df[df.model != reference].groupby("model", sort=False):
        g = g.set_index(keys)
        rng = np.random.default_rng(seed)
        row: dict[str, object] = {"model": name, "reference": reference}
        for m in ("pearson_delta", "pearson_delta_de"):
            d = (g[m] - ref[m].reindex(g.index)).groupby(level="condition").mean().dropna().to_numpy()
            boot = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1) if len(d) else np.array([np.nan])
            row.update({f"{m}_diff": float(d.mean()) if len(d) else float("nan"),
                        f"{m}_lo": float(np.quantile(boot, 0.025)), f"{m}_hi": float(np.quantile(boot, 0.975)),
                        f"{m}_wins": int((d > _TIE).sum()), "n": int(len(d))})
        rows.append(row)
    return pd.DataFrame(rows)


def pseudobulk_markdown(summary: pd.DataFrame, differences: pd.DataFrame | None = None,
                        header: Sequence[str] = ()) -> str:
    """Markdown of :func:`summarise_pseudobulk` (mean +- sd) and, if given, of
    :func:`paired_differences`. Fit times are left out (they vary between machines;
    they are in the CSV), so the same command gives the same table."""
    k_de = summary.attrs.get("k_de", 20)
    lines = [*header, *([""] if header else []),
             f"| model | doubles | Pearson delta (all genes) | Pearson delta (top-{k_de} DE) | R2 delta | L2 |",
             "|---|---|---|---|---|---|"]
    for r in summary.itertuples(index=False):
        cells = [
            f"{getattr(r, m + '_mean'):.3f} ± {getattr(r, m + '_sd'):.3f}"
            for m in ("pearson_delta", "pearson_delta_de", "r2_delta", "mean_l2")
        ]
        lines.append(f"| {r.model} | {r.n_doubles} | " + " | ".join(cells) + " |")
    sd = summary["sd_over"].iloc[0] if len(summary) else "doubles"
    lines.append("")
    lines.append(f"± is the sd over {sd}" + (" (of the per-seed mean over doubles)." if sd == "seeds" else "."))
    if differences is not None and len(differences):
        ref = differences["reference"].iloc[0]
        lines += ["", f"Paired difference to {ref} (mean over doubles, 95% bootstrap interval over doubles; "
                  f"wins: doubles where the model is higher):", "",
                  f"| model | Pearson delta (all genes) | wins | Pearson delta (top-{k_de} DE) | wins |",
                  "|---|---|---|---|---|"]
        for r in differences.itertuples(index=False):
            cells = []
            for m in ("pearson_delta", "pearson_delta_de"):
                cells += [f"{getattr(r, m + '_diff'):+.3f} [{getattr(r, m + '_lo'):+.3f}, {getattr(r, m + '_hi'):+.3f}]",
                          f"{getattr(r, m + '_wins')}/{r.n}"]
            lines.append(f"| {r.model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
