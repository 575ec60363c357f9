"""The context benchmark: predict a perturbation in a context (cell type, cell line) where
it was never measured.

Each fold holds out (perturbation, context) pairs: by default every perturbation of one
context at once (``folds="context"``: that context keeps only its control cells), or one
pair at a time (``folds="pair"``). Each held-out pair is predicted from its context's
control cells and scored against its observed cells (energy distance with a bootstrap
interval, MMD, Pearson correlation of the mean change) next to

* the **noise floor**: one random half of the observed cells scored against the other;
* **no change**: the context's control cells as they are;
* **context shift**: the context's controls moved by the perturbation's mean change
  (perturbed minus control mean) averaged over the training contexts where it was measured;
* **pooled shift**: the controls moved by the mean of every training cell of the
  perturbation minus the mean of every training control cell (contexts ignored);
* **linear**: a ridge fit of the training groups' mean expression on the perturbation
  labels and a one-hot context (``mean = a + B l + C c``); the controls are moved by ``B l``;
* the trained models (any name :func:`~.spec.get_builder` accepts, e.g. ``pdae`` and
  ``fcr``, which use the context column; ``pdae_no_context``: PDAE with the context column
  left out, for comparison; ``pdae_decoder_context``: PDAE whose decoder also reads the context).

**Identity preservation** (``model`` rows with ``condition == "identity"``): each fold's
held-out context's control cells are split in two halves; "control" is predicted from
one half and scored against the other. Returning the source cells unchanged scores the
``identity_floor`` (half against half); a model that forgets the context scores far above it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ...data.contexts import HoldoutItem, context_values
from ...data.registry import PerturbationRegistry, condition_column
from ...errors import DataError, PDAEError
from ..metrics import energy_distance, evaluate_condition
from .files import dense
from .spec import FitRequest, get_builder

BASELINES = ("no_change", "context_shift", "pooled_shift", "linear")
NOISE = "noise_floor"
#: the model name that trains PDAE with the context column left out
PDAE_NO_CONTEXT = "pdae_no_context"
#: the model name that trains PDAE whose decoder also reads the context (``decoder_context=True``)
PDAE_DECODER_CONTEXT = "pdae_decoder_context"
#: model names this benchmark adds to those :func:`~.spec.get_builder` knows
EXTRA_MODELS = (PDAE_NO_CONTEXT, PDAE_DECODER_CONTEXT)


def context_folds(adata: ad.AnnData, registry: PerturbationRegistry, folds: str = "context",
                  contexts: Sequence[str] | None = None) -> list[tuple[str, list[HoldoutItem]]]:
    """(fold name, held-out pairs) per fold. A pair is held out only where its perturbation was
    measured in at least one other context (else there is nothing to carry over)."""
    key = registry.covariate_key
    if key is None:
        raise DataError("The context benchmark needs a context column (covariate_key, e.g. cell_type).")
    conds = condition_column(adata, registry.perturbation_key)
    ctx = context_values(adata, key)
    pairs = sorted({(c, x) for c, x in zip(conds, ctx) if c != registry.control_label})
    where: dict[str, set[str]] = {}
    for c, x in pairs:
        where.setdefault(c, set()).add(x)
    chosen = sorted(set(ctx)) if contexts is None else list(contexts)
    unknown = [x for x in chosen if x not in set(ctx)]
    if unknown:
        raise DataError(f"Context(s) {unknown} have no cells in column {key!r}.")
    out: list[tuple[str, list[HoldoutItem]]] = []
    for x in chosen:
        items = [HoldoutItem(c, x) for c, y in pairs if y == x and len(where[c]) >= 2]
        if folds == "context":
            if items:
                out.append((x, items))
        elif folds == "pair":
            out.extend((it.name, [it]) for it in items)
        else:
            raise ValueError(f"folds must be 'context' or 'pair', got {folds!r}")
    if not out:
        raise DataError("No (perturbation, context) pair can be held out: no perturbation was measured in two contexts.")
    return out


def _group_means(X: np.ndarray, conds: np.ndarray, ctx: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    out: dict[tuple[str, str], np.ndarray] = {}
    for key in sorted(set(zip(conds.tolist(), ctx.tolist()))):
        out[key] = X[(conds == key[0]) & (ctx == key[1])].mean(0)
    return out


def baseline_shifts(adata: ad.AnnData, registry: PerturbationRegistry, train: np.ndarray,
                    items: Sequence[HoldoutItem], alpha: float = 1e-2) -> dict[str, dict[str, np.ndarray]]:
    """Per baseline, per held-out pair name: the shift (genes,) added to the context's controls.
    Uses the training cells (``train`` mask) only."""
    X = registry.expression(adata[train]).astype(np.float64)
    conds = condition_column(adata, registry.perturbation_key)[train]
    ctx = context_values(adata, registry.covariate_key)[train]
    ctrl = registry.control_label
    means = _group_means(X, conds, ctx)
    is_ctrl = conds == ctrl
    pooled_ctrl = X[is_ctrl].mean(0)
    # linear: group means on [1, labels, one-hot context (reference dropped)], ridge
    groups = sorted(means)
    cats = sorted(set(ctx))
    L = np.stack([registry.label_vector(c) for c, _ in groups]).astype(np.float64)
    C = np.zeros((len(groups), max(0, len(cats) - 1)))
    for i, (_, x) in enumerate(groups):
        if cats.index(x) > 0:
            C[i, cats.index(x) - 1] = 1.0
    D = np.concatenate([np.ones((len(groups), 1)), L, C], axis=1)
    Y = np.stack([means[g] for g in groups])
    pen = alpha * np.eye(D.shape[1])
    pen[0, 0] = 0.0
    coef = np.linalg.solve(D.T @ D + pen, D.T @ Y)
    B = coef[1 : 1 + L.shape[1]]
    out: dict[str, dict[str, np.ndarray]] = {b: {} for b in BASELINES}
    for it in items:
        p = it.condition
        out["no_change"][it.name] = np.zeros(X.shape[1])
        changes = [means[(p, x)] - means[(ctrl, x)] for x in cats if (p, x) in means and (ctrl, x) in means]
        if not changes:
            raise DataError(f"{p!r} was not measured (with controls) in any training context.")
        out["context_shift"][it.name] = np.mean(changes, axis=0)
        out["pooled_shift"][it.name] = X[conds == p].mean(0) - pooled_ctrl
        out["linear"][it.name] = registry.label_vector(p).astype(np.float64) @ B
    return out


def _score(pred: np.ndarray, obs: np.ndarray, src: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    m = evaluate_condition(pred, obs, src, n_boot=n_boot, seed=seed, noise_splits=0)
    keep = ("energy_distance", "energy_distance_lo", "energy_distance_hi", "energy_distance_ctrl", "mmd_rbf",
            "pearson_delta", "pearson_delta_de", "n_pred", "n_obs")
    return {k: m[k] for k in keep}


def _fit(name: str, adata: ad.AnnData, registry: PerturbationRegistry, holdout: list[str], train_mask: np.ndarray,
         seed: int, train: dict[str, Any], options: dict[str, Any], accelerator: str) -> Any:
    reg, builder_name, data = registry, name, adata
    if name == PDAE_NO_CONTEXT:  # no context column: the held-out pairs' cells are left out of the data
        reg, builder_name, holdout = replace(registry, covariate_key=None), "pdae", []
        data = adata[train_mask]
    elif name == PDAE_DECODER_CONTEXT:
        builder_name, options = "pdae", {**options, "decoder_context": True}
    req = FitRequest(data, reg, holdout, seed, dict(options), dict(train), accelerator, [])
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not use the context column.*")
        return get_builder(builder_name)(req)


def run_context_benchmark(
    adata: ad.AnnData,
    registry: PerturbationRegistry,
    models: Sequence[str] = ("pdae", "fcr"),
    seeds: Sequence[int] = (0, 1, 2),
    folds: str = "context",
    contexts: Sequence[str] | None = None,
    train: dict[str, Any] | None = None,
    model_options: dict[str, dict[str, Any]] | None = None,
    n_boot: int = 200,
    accelerator: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """One row per (model, seed, held-out pair), plus identity rows (see the module docstring).
    Baselines and the noise floor are deterministic given the data and appear once per seed."""
    say = progress or (lambda _m: None)
    conds = condition_column(adata, registry.perturbation_key)
    ctx = context_values(adata, registry.covariate_key) if registry.covariate_key else None
    plan = context_folds(adata, registry, folds, contexts)
    assert ctx is not None
    ctrl = registry.control_label
    all_controls = dense(registry.expression(adata[conds == ctrl])).astype(np.float64) if models else None
    rows: list[dict[str, Any]] = []
    for fold, items in plan:
        holdout = [it.name for it in items]
        train_mask = np.ones(adata.n_obs, dtype=bool)
        for it in items:
            train_mask &= ~((conds == it.condition) & (ctx == it.context))
        shifts = baseline_shifts(adata, registry, train_mask, items)
        for seed in seeds:
            rng = np.random.default_rng([seed, len(rows)])
            src_cache: dict[str, tuple[ad.AnnData, np.ndarray]] = {}
            for it in items:
                if it.context not in src_cache:
                    s = adata[(conds == ctrl) & (ctx == it.context)]
                    src_cache[it.context] = (s, dense(registry.expression(s)).astype(np.float64))
            observed = {}
            for it in items:
                _, src = src_cache[it.context]
                obs = dense(registry.expression(adata[(conds == it.condition) & (ctx == it.context)])).astype(np.float64)
                observed[it.name] = obs
                base = {"fold": fold, "seed": seed, "condition": it.condition, "context": it.context, "pair": it.name}
                perm = rng.permutation(len(obs))
                h = len(obs) // 2
                rows.append({**base, "model": NOISE, **_score(obs[perm[:h]], obs[perm[h:]], src, n_boot, seed)})
                for b in BASELINES:
                    rows.append({**base, "model": b, **_score(src + shifts[b][it.name], obs, src, n_boot, seed)})
            halves = {}  # identity: control predicted from one half of a context's controls, scored on the other
            for x, (s, src) in src_cache.items():
                perm = np.random.default_rng([seed, 7]).permutation(s.n_obs)
                half_a, half_b = perm[: s.n_obs // 2], perm[s.n_obs // 2:]
                floor = energy_distance(src[half_a], src[half_b])
                halves[x] = (half_a, half_b, floor)
                rows.append({"fold": fold, "seed": seed, "condition": "identity", "context": x, "pair": f"{ctrl}@{x}",
                             "model": NOISE, "energy_distance": floor, "identity_floor": floor})
            for name in models:
                say(f"fold {fold}, seed {seed}: fitting {name}")
                t0 = time.perf_counter()
                try:
                    model = _fit(name, adata, registry, holdout, train_mask, seed, train or {}, (model_options or {}).get(name, {}),
                                 accelerator)
                except PDAEError as e:
                    rows.append({"fold": fold, "seed": seed, "model": name, "error": f"fit failed: {e}"})
                    continue
                fit_s = time.perf_counter() - t0
                leaked = {tuple(p) for p in getattr(model, "train_pairs", [])} & {(i.condition, i.context) for i in items}
                if leaked:
                    raise PDAEError(f"{name} was trained on held-out pair(s) {sorted(leaked)}; refusing to score it.")
                for it in items:
                    s, src = src_cache[it.context]
                    obs = observed[it.name]
                    pred = dense(model.predict(s, it.condition, seed=seed).X).astype(np.float64)
                    rows.append({"fold": fold, "seed": seed, "condition": it.condition, "context": it.context,
                                 "pair": it.name, "model": name, "fit_seconds": fit_s,
                                 **_score(pred, obs, src, n_boot, seed)})
                for x, (s, src) in src_cache.items():
                    half_a, half_b, floor = halves[x]
                    pred = dense(model.predict(s[half_a], ctrl, seed=seed).X).astype(np.float64)
                    rows.append({"fold": fold, "seed": seed, "condition": "identity", "context": x,
                                 "pair": f"{ctrl}@{x}", "model": name,
                                 "energy_distance": energy_distance(pred, src[half_b]), "identity_floor": floor,
                                 "energy_distance_all_controls": energy_distance(pred, all_controls)})
    return pd.DataFrame(rows)


def summarise_context(rows: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean over held-out pairs and seeds of ED / MMD / Pearson delta, a 95% interval
    of the mean ED from a bootstrap over pairs, wins against each baseline, and identity ED."""
    pairs = rows[rows["condition"] != "identity"].copy()
    ident = rows[rows["condition"] == "identity"]
    out = []
    per_pair = pairs.groupby(["model", "pair"])[["energy_distance", "mmd_rbf", "pearson_delta"]].mean()
    rng = np.random.default_rng(0)
    for model, df in per_pair.groupby(level=0):
        ed = df["energy_distance"].to_numpy()
        boots = [rng.choice(ed, len(ed)).mean() for _ in range(1000)] if len(ed) else [np.nan]
        row = {"model": model, "pairs": len(ed), "energy_distance": ed.mean(), "ed_lo": np.quantile(boots, 0.025),
               "ed_hi": np.quantile(boots, 0.975), "mmd_rbf": df["mmd_rbf"].mean(),
               "pearson_delta": df["pearson_delta"].mean()}
        for b in ("no_change", "context_shift"):
            if b in per_pair.index.get_level_values(0) and model != b:
                other = per_pair.loc[b]["energy_distance"].reindex(df.index.get_level_values(1))
                row[f"beats_{b}"] = f"{int((ed < other.to_numpy()).sum())}/{len(ed)}"
        idm = ident[ident["model"] == model]
        row["identity_ed"] = idm["energy_distance"].mean() if len(idm) else np.nan
        row["identity_floor"] = idm["identity_floor"].mean() if len(idm) else np.nan
        out.append(row)
    return pd.DataFrame(out).sort_values("energy_distance").reset_index(drop=True)
