"""benchmarks/gene_sets.py and kernel_departure.score restricted to a gene set."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_responsive_genes_keeps_the_largest_root_mean_square_change():
    gs = _load("gene_sets")
    singles = np.array([[0.0, 3.0, -1.0, 0.5, 0.0],
                        [0.1, -3.0, 1.0, 0.5, 2.0]])  # rms: 0.07, 3, 1, 0.5, 1.41
    assert gs.responsive_genes(singles, 2).tolist() == [1, 4]
    assert gs.responsive_genes(singles, 3).tolist() == [1, 2, 4]
    assert gs.responsive_genes(singles, 5).tolist() == [0, 1, 2, 3, 4]
    for bad in (0, 6):
        with pytest.raises(ValueError, match="1 <= n"):
            gs.responsive_genes(singles, bad)


@pytest.fixture(scope="module")
def one_fold(tmp_path_factory, data_dir):
    """One fold's rows as the checks write them, with made-up ensemble predictions: 26 held-out doubles, the
    observed profiles plus noise for the members and the out-of-fold predictions."""
    nm = _load("nonadditive_mix")
    from pdae_core.eval.pseudobulk.profiles import train_conditions

    P = nm._profiles(str(data_dir))
    doubles = P.eligible_doubles()
    test = doubles[:26]
    train = P.subset(train_conditions(P, test))
    cal = train.eligible_doubles()
    rng = np.random.default_rng(0)
    obs_cal, obs_test = train.deltas[train.index(cal)], P.deltas[P.index(test)]
    folder = tmp_path_factory.mktemp("rows")
    np.savez(folder / "seed0_fold0.npz", oof=obs_cal + rng.normal(0, 0.3, obs_cal.shape),
             members=obs_test + rng.normal(0, 0.3, (3, *obs_test.shape)), test=np.array(test), calibration=np.array(cal),
             step=np.int64(0), source=np.array("all"))
    return folder, P


def test_kernel_departure_score_on_a_gene_set_is_the_score_of_the_sliced_data(one_fold, data_dir):
    kd = _load("kernel_departure")
    from pdae_core.eval.pseudobulk.interaction_scores import double_figures

    folder, P = one_fold
    full = kd.score(folder, str(data_dir))
    same = kd.score(folder, str(data_dir), genes=np.arange(P.n_genes))
    pd.testing.assert_frame_equal(full, same)
    genes = np.arange(0, P.n_genes, 7)
    sub = kd.score(folder, str(data_dir), genes=genes)
    assert len(sub) == 26 and {"magnitude_pair_kernel", "magnitude_heuristic", "na_scaled_additive"} <= set(sub)
    # the observed metrics are those of the double's and its singles' changes on those genes only
    d = sub["double"].iloc[0]
    a, b = d.split("+")
    row = lambda c: P.deltas[P.index([c])[0]][genes]  # noqa: E731
    f = double_figures(row(a), row(b), row(d))
    assert np.isclose(np.exp(sub["magnitude_obs"].iloc[0]), f["magnitude"])
    assert np.isclose(np.exp(sub["residual_obs"].iloc[0]), f["normalised_residual"])
    assert not np.isclose(sub["magnitude_obs"].iloc[0], full["magnitude_obs"].iloc[0])
    # predictions close to the observed profiles rank the doubles well on any gene set
    for df in (full, sub):
        assert df[["magnitude_obs", "magnitude_pdae_ensemble"]].corr(method="spearman").iloc[0, 1] > 0.8


def test_split_half_is_one_without_noise_and_drops_with_it():
    gs = _load("gene_sets")
    from pdae_core.eval.pseudobulk.profiles import ProfileSet

    rng = np.random.default_rng(1)
    n_genes, singles = 400, [f"g{i}" for i in range(8)]
    base = {s: rng.normal(0, 1, n_genes) for s in singles}
    doubles = [(a, b) for i, a in enumerate(singles) for b in singles[i + 1:]]
    scale = {d: 0.3 + 1.4 * k / len(doubles) for k, d in enumerate(doubles)}  # magnitudes spread over the doubles

    def profiles(noise: float) -> ProfileSet:
        rows = [base[s] for s in singles] + [scale[d] * (base[d[0]] + base[d[1]]) + rng.normal(0, noise, n_genes)
                                             for d in doubles]
        names = singles + [f"{a}+{b}" for a, b in doubles]
        parts = [(s,) for s in singles] + list(doubles)
        labels = np.array([[float(s in p) for s in singles] for p in parts])
        return ProfileSet(names, parts, singles, labels, np.array(rows), [f"x{i}" for i in range(n_genes)])

    clean = gs.split_half(profiles(0.0), n_splits=5)
    assert clean["magnitude"] == pytest.approx(1.0)
    noisy = gs.split_half(profiles(3.0), n_splits=5)
    assert noisy["magnitude"] < 0.9 and noisy["residual"] < 0.9
