"""Where a pair departs from the sum of its parts, gene by gene (pdae_core.eval.departure)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pdae_core.eval.departure import (
    KINDS,
    agreement_in_words,
    departure_agreement,
    departure_kind,
    describe_departures,
    gene_departures,
)
from pdae_core.plot.interactions import DEPARTURE_TABLE_LABELS, departure_chart

GENES = [f"g{i}" for i in range(6)]


def test_each_kind_of_departure():
    total = np.array([1.0, 1.0, 1.0, -1.0, 0.1, 0.0, 2.0])
    dep = np.array([0.5, -0.5, -1.5, 0.4, 0.9, -0.2, 0.0])
    assert list(departure_kind(total, dep)) == ["stronger", "weaker", "reversed", "weaker", "new", "new", "none"]
    assert set(departure_kind(total, dep)) <= set(KINDS)
    with pytest.raises(ValueError, match="same shape"):
        departure_kind(total, dep[:3])


def test_departures_are_the_pair_minus_the_sum_of_the_parts_per_network():
    rng = np.random.default_rng(0)
    ch = rng.normal(size=(4, 3, 6))
    ch[:, :2] = ch[0, :2]  # the observed singles, the same for every network
    t = gene_departures(ch, GENES).set_index("gene").loc[GENES]
    mean = ch.mean(0)
    np.testing.assert_allclose(t["sum_of_parts"], mean[0] + mean[1])
    np.testing.assert_allclose(t["predicted_pair"], mean[2])
    np.testing.assert_allclose(t["departure"], mean[2] - mean[0] - mean[1])
    np.testing.assert_allclose(t["departure_spread"], (ch[:, 2] - ch[:, 0] - ch[:, 1]).std(0, ddof=1))
    assert "departure_lo" not in t and "observed_departure" not in t
    # sorted by the size of the departure
    back = gene_departures(ch, GENES)
    assert list(np.abs(back["departure"])) == sorted(np.abs(back["departure"]), reverse=True)
    # one network: no spread
    assert gene_departures(ch[:1], GENES)["departure_spread"].isna().all()


def test_ranges_and_the_observed_departure():
    rng = np.random.default_rng(1)
    ch = rng.normal(size=(1, 3, 6))
    obs = rng.normal(size=(3, 6))
    hw = np.linspace(0.1, 0.6, 6)
    t = gene_departures(ch, GENES, observed=obs, half_width=hw).set_index("gene").loc[GENES]
    np.testing.assert_allclose(t["departure_hi"] - t["departure"], hw)
    np.testing.assert_allclose(t["departure"] - t["departure_lo"], hw)
    np.testing.assert_allclose(t["observed_departure"], obs[2] - obs[0] - obs[1])
    assert list(t["observed_kind"]) == list(departure_kind(obs[0] + obs[1], obs[2] - obs[0] - obs[1]))
    with pytest.raises(ValueError, match="networks, 3, genes"):
        gene_departures(ch[0], GENES)
    with pytest.raises(ValueError, match="5 gene names for 6 genes"):
        gene_departures(ch, GENES[:5])
    with pytest.raises(ValueError, match="one value per gene"):
        gene_departures(ch, GENES, half_width=hw[:2])
    with pytest.raises(ValueError, match=r"observed must have shape \(3, 6\)"):
        gene_departures(ch, GENES, observed=obs[:2])


def test_agreement_against_direct_formulas_and_the_scaling_bound():
    rng = np.random.default_rng(2)
    obs = rng.normal(size=(3, 40))
    ch = obs[None].copy()
    ch[0, 2] = obs[2] + 0.3 * rng.normal(size=40)  # a prediction near the observed pair
    t = gene_departures(ch, [f"g{i}" for i in range(40)], observed=obs, half_width=np.full(40, 0.3))
    a = departure_agreement(t)
    pred_dep, obs_dep = ch[0, 2] - obs[0] - obs[1], obs[2] - obs[0] - obs[1]
    assert a["pearson"] == pytest.approx(np.corrcoef(pred_dep, obs_dep)[0, 1])
    assert a["scaling"] == pytest.approx(abs(np.corrcoef(obs[0] + obs[1], obs_dep)[0, 1]))
    assert a["covered"] == pytest.approx(np.mean(np.abs(pred_dep - obs_dep) <= 0.3))
    assert a["genes"] == 40
    # no prediction that scales the sum alike does better than the bound
    for alpha in (-2.0, 0.3, 0.8, 1.5):
        r = np.corrcoef((alpha - 1) * (obs[0] + obs[1]), obs_dep)[0, 1]
        assert r <= a["scaling"] + 1e-12
    words = agreement_in_words(a, in_training=True)
    assert f"r = {a['pearson']:.2f} over 40 genes" in words and "better than scaling" in words
    assert "not a test of the model" in words
    flat = dict(a, pearson=float("nan"))
    assert "cannot be measured" in agreement_in_words(flat)
    with pytest.raises(ValueError, match="not measured"):
        departure_agreement(t.drop(columns=["observed_departure"]))


def test_the_departures_in_words_and_in_a_chart():
    t = pd.DataFrame({"gene": ["a", "b", "c", "d"], "sum_of_parts": [1.0, -1.0, 0.0, 1.0],
                      "departure": [-0.8, -0.5, 0.4, 0.1], "kind": ["weaker", "stronger", "new", "stronger"],
                      "departure_spread": [0.1, 0.2, 0.1, 0.0]})
    assert describe_departures(t, n=3) == ("Of the 3 genes that depart most from the sum of the parts, 1 change less "
                                           "than the sum (buffered), 1 more than the sum and 1 only with the pair.")
    assert describe_departures(t.head(0)) == "No gene departs from the sum of the parts."
    fig = departure_chart(t, "A + B", n=3)
    bars = fig.data[0]
    assert list(bars.y) == ["c", "b", "a"] and list(bars.x) == [0.4, -0.5, -0.8]
    assert list(bars.error_x.array) == [0.1, 0.2, 0.1]  # the spread without a range
    assert len(fig.data) == 1  # not measured: no observed markers
    t["observed_departure"] = [-0.7, -0.4, 0.0, 0.2]
    t["departure_lo"], t["departure_hi"] = t["departure"] - 0.3, t["departure"] + 0.5
    fig = departure_chart(t, "A + B")
    assert list(fig.data[0].error_x.array) == pytest.approx([0.5] * 4)
    assert list(fig.data[0].error_x.arrayminus) == pytest.approx([0.3] * 4)
    assert list(fig.data[1].x) == [0.2, 0.0, -0.4, -0.7]
    assert set(DEPARTURE_TABLE_LABELS) >= set(t.columns)
    with pytest.raises(ValueError, match="no column"):
        departure_chart(t.drop(columns=["kind"]), "A + B")


def test_top_departures_name_each_pairs_largest_genes():
    from pdae_core.eval.departure import top_departures

    dep = np.array([[0.1, -0.9, 0.3, 0.0], [0.0, 0.0, 0.0, 0.2]])
    assert top_departures(dep, ["a", "b", "c", "d"]) == ["b -0.90; c +0.30; a +0.10", "d +0.20; a +0.00; b +0.00"]
    assert top_departures(dep, ["a", "b", "c", "d"], k=9)[0].count(";") == 3  # at most every gene
    with pytest.raises(ValueError, match="3 gene names for 4 genes"):
        top_departures(dep, ["a", "b", "c"])
