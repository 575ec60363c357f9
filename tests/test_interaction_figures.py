"""The Interactions page's builders: the pair heatmap and the predicted vs observed scatter
(small synthetic pair tables), and the pair helpers behind the page and Compose's
interaction box (a tiny model on synthetic data)."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import pdae_core as pc
from pdae_core import explore
from pdae_core.data.synthetic import make_synthetic
from pdae_core.eval.interactions import describe_interaction
from pdae_core.eval.pair_screen import pair_call, pair_interaction, screen_pairs
from pdae_core.plot import interactions as fi
from pdae_core.plot.style import DIVERGING, KIND_COLORS, OBSERVED

SINGLES = ["A", "B", "C", "D"]
HELD = {"A+C"}
TRAINED = {"B+D"}


def pair_table(spread: bool = False, seed: int = 0) -> pd.DataFrame:
    """A screen-like table of the 6 pairs of A..D: A+C held out, B+D in training (both measured)."""
    rng = np.random.default_rng(seed)
    pairs = list(itertools.combinations(SINGLES, 2))
    t = pd.DataFrame({"pair": [f"{a}+{b}" for a, b in pairs], "a": [a for a, _ in pairs], "b": [b for _, b in pairs]})
    t["magnitude"] = np.linspace(0.5, 1.5, len(t))
    t["normalised_residual"] = np.linspace(0.1, 0.6, len(t))
    for col in ("magnitude", "normalised_residual"):
        t[f"{col}_spread"] = rng.uniform(0.01, 0.2, len(t)) if spread else np.nan
    t["test_next"] = t["normalised_residual"] + t["normalised_residual_spread"].fillna(0)
    t["c1"], t["c2"], t["dominance"] = t["magnitude"] / np.sqrt(2), t["magnitude"] / np.sqrt(2), 0.0
    t["held_out"] = t["pair"].isin(HELD)
    t["in_training"] = t["pair"].isin(TRAINED)
    t["measured"] = t["held_out"] | t["in_training"]
    t["observed_magnitude"] = np.where(t["measured"], t["magnitude"] + 0.1, np.nan)
    t["observed_normalised_residual"] = np.where(t["measured"], t["normalised_residual"] - 0.05, np.nan)
    t.attrs["n_members"] = 5 if spread else 1
    return t


def heatmaps(fig: go.Figure) -> list[go.Heatmap]:
    return [t for t in fig.data if isinstance(t, go.Heatmap)]


def z_array(trace: go.Heatmap) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in trace.z], dtype=float)


def marked_cells(fig: go.Figure, legend_name: str) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for t in fig.data:
        if isinstance(t, go.Scatter) and t.name == legend_name:
            out |= set(zip(t.x, t.y))
    return out


# ---- pair_matrix ----------------------------------------------------------------------------
def test_pair_matrix_is_symmetric_with_values_at_their_cells():
    t = pair_table()
    names, M = fi.pair_matrix(t, "magnitude")
    assert names == SINGLES
    np.testing.assert_array_equal(np.isnan(np.diag(M)), True)
    np.testing.assert_allclose(M, M.T, equal_nan=True)
    for row in t.itertuples():
        i, j = names.index(row.a), names.index(row.b)
        assert M[i, j] == M[j, i] == row.magnitude
    names, M2 = fi.pair_matrix(t, "magnitude", order=["D", "C", "B", "A"])
    assert names == ["D", "C", "B", "A"]
    np.testing.assert_allclose(M2, M[::-1, ::-1], equal_nan=True)


def test_pair_matrix_missing_pairs_and_non_finite_values_are_nan():
    t = pair_table()
    t.loc[t["pair"] == "A+B", "normalised_residual"] = np.inf  # singles cancel: not defined
    t = t[t["pair"] != "C+D"]
    names, M = fi.pair_matrix(t, "normalised_residual")
    pos = {n: i for i, n in enumerate(names)}
    assert np.isnan(M[pos["A"], pos["B"]]) and np.isnan(M[pos["B"], pos["A"]])
    assert np.isnan(M[pos["C"], pos["D"]])
    assert np.isfinite(M).sum() == 2 * 4  # 4 defined pairs, both cells each
    with pytest.raises(ValueError, match="not in order"):
        fi.pair_matrix(t, "magnitude", order=["A", "B"])
    with pytest.raises(ValueError, match="no column"):
        fi.pair_matrix(t, "nothing")


# ---- pair_heatmap ---------------------------------------------------------------------------
def test_heatmap_of_one_network_marks_measured_pairs():
    t = explore.pair_ranking(pair_table(), "least_additive")
    fig = fi.pair_heatmap(t, "least_additive")
    (heat,) = heatmaps(fig)  # one network: no spread panel even when asked
    z = z_array(heat)
    _, M = fi.pair_matrix(t, "normalised_residual")
    np.testing.assert_allclose(z, M, equal_nan=True)
    np.testing.assert_allclose(z, z.T, equal_nan=True)
    assert list(heat.x) == list(heat.y) == SINGLES
    assert heat.colorscale != DIVERGING and heat.zmid is None  # sequential for non-additivity
    held = fi.STATUS_MARKS["held out"]
    assert marked_cells(fig, held[2]) == {("A", "C"), ("C", "A")}
    assert marked_cells(fig, fi.STATUS_MARKS["in training"][2]) == {("B", "D"), ("D", "B")}
    mark = next(tr for tr in fig.data if tr.name == held[2])
    assert mark.marker.symbol == "circle-open" and mark.marker.color == KIND_COLORS[OBSERVED]
    # hover in words: the pair, its call, its metrics, whether it was measured
    text = heat.text[SINGLES.index("A")][SINGLES.index("C")]
    assert text == heat.text[SINGLES.index("C")][SINGLES.index("A")]
    assert "A + C" in text and "measured, held out (a true test)" in text and "observed magnitude" in text
    assert "non-additivity" in text and "±" not in text  # no spread for one network
    assert "not measured" in heat.text[0][1]
    assert heat.text[0][0] == ""  # the diagonal
    assert "of every pair (6 pairs of 4 singles)" in fig.layout.title.text


def test_heatmap_of_magnitude_is_diverging_around_one():
    fig = fi.pair_heatmap(pair_table(), "synergy")
    (heat,) = heatmaps(fig)
    assert heat.zmid == 1.0
    assert heat.colorbar.title.text == "magnitude"


def test_heatmap_of_an_ensemble_shows_the_spread_next_to_it():
    t = pair_table(spread=True)
    fig = fi.pair_heatmap(t, "synergy")
    main, spread = heatmaps(fig)
    _, S = fi.pair_matrix(t, "magnitude_spread")
    np.testing.assert_allclose(z_array(spread), S, equal_nan=True)
    assert spread.xaxis == "x2" and main.xaxis == "x"
    assert "spread across networks ± %{z:.2f}" in spread.hovertemplate and spread.zmin == 0
    titles = [a.text for a in fig.layout.annotations]
    assert "spread across 5 networks (±)" in titles
    assert "±" in main.text[0][1]  # the hover gives the spread
    # the marks are on both panels, in the legend once
    held = fi.STATUS_MARKS["held out"][2]
    held_traces = [tr for tr in fig.data if tr.name == held]
    assert {tr.xaxis for tr in held_traces} == {"x", "x2"}
    assert sum(bool(tr.showlegend) for tr in held_traces) == 1
    assert len(heatmaps(fi.pair_heatmap(t, "synergy", show_spread=False))) == 1
    # nothing overlaps in the gap: the left colour bar sits there untitled (its panel's title names it),
    # and the right panel does not repeat the row names into it
    lay = fig.layout
    assert lay.xaxis.domain[1] < main.colorbar.x < lay.xaxis2.domain[0] - 0.05 and main.colorbar.title.text is None
    assert lay.yaxis2.showticklabels is False and lay.yaxis.showticklabels is not False


def test_heatmap_without_values_says_so():
    t = pair_table()  # one network: the spread is NaN everywhere
    t["normalised_residual_spread"] = np.nan
    fig = fi.pair_heatmap(t, "uncertain")
    (heat,) = heatmaps(fig)
    assert all(v is None for row in heat.z for v in row)
    assert any("train an ensemble" in a.text for a in fig.layout.annotations)
    with pytest.raises(ValueError, match="Unknown score"):
        fi.pair_heatmap(t, "best")


def test_heatmap_hover_says_not_defined_for_an_infinite_residual():
    t = pair_table()
    t.loc[t["pair"] == "A+B", "normalised_residual"] = np.inf
    (heat,) = heatmaps(fi.pair_heatmap(t, "least_additive"))
    assert heat.z[0][1] is None and "non-additivity not defined" in heat.text[0][1]


# ---- observed_scatter -----------------------------------------------------------------------
def test_observed_scatter_of_the_measured_pairs():
    t = pair_table()
    fig = fi.observed_scatter(t, "magnitude")
    points = [tr for tr in fig.data if tr.mode and "markers" in tr.mode]
    assert {tr.name for tr in points} == {fi.STATUS_MARKS["held out"][2], fi.STATUS_MARKS["in training"][2]}
    held = next(tr for tr in points if tr.name == fi.STATUS_MARKS["held out"][2])
    row = t.set_index("pair").loc["A+C"]
    assert list(held.text) == ["A+C"]
    assert held.x[0] == pytest.approx(row["observed_magnitude"]) and held.y[0] == pytest.approx(row["magnitude"])
    assert held.error_y.array is None  # one network: no error bars
    assert any(tr.name == "predicted = observed" for tr in fig.data)
    assert "2 measured pairs" in fig.layout.title.text and "Spearman" not in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "observed magnitude (cells)"


def test_observed_scatter_of_an_ensemble_has_error_bars_and_spearman():
    t = pair_table(spread=True)
    t["held_out"] = t["measured"] = True  # every pair measured and held out
    t["in_training"] = False
    t["observed_normalised_residual"] = t["normalised_residual"][::-1].to_numpy()  # the opposite order
    fig = fi.observed_scatter(t, "normalised_residual")
    (held,) = [tr for tr in fig.data if tr.name == fi.STATUS_MARKS["held out"][2]]
    np.testing.assert_allclose(held.error_y.array, t["normalised_residual_spread"])
    assert "6 measured pairs · Spearman ρ -1.00" in fig.layout.title.text


def test_observed_scatter_without_measured_pairs_says_so():
    t = pair_table()
    t["observed_magnitude"] = np.nan
    fig = fi.observed_scatter(t)
    assert not [tr for tr in fig.data if tr.mode and "markers" in tr.mode]
    assert fig.layout.annotations[0].text == "No measured pair to compare with"
    with pytest.raises(ValueError, match="metric"):
        fi.observed_scatter(t, "dominance")


# ---- the pair helpers behind the page ----------------------------------------------------------
@pytest.mark.parametrize(("c1", "c2"), [(1.0, 1.1), (0.3, 0.4), (1.3, 1.2), (0.9, 0.05), (1.2, -0.4), (0.0, 0.0)])
def test_pair_call_agrees_with_describe_interaction(c1, c2):
    mag = float(np.hypot(c1, c2))
    dom = abs(np.log10(abs(c1) / abs(c2))) if c1 and c2 else (np.nan if c1 == c2 == 0 else np.inf)
    words = pair_call(c1, c2, mag, dom, ("X", "Y"))
    sentence = describe_interaction({"c1": c1, "c2": c2, "magnitude": mag, "model_fit": 1.0, "dominance": dom},
                                    ("X", "Y"))
    if c1 == c2 == 0:
        assert words == "not measurable" and sentence.startswith("no interaction")
        return
    assert sentence.startswith(words.split(";")[0] + ":")
    assert ("mostly like X" in words) == ("mostly like X" in sentence)
    assert ("opposite directions" in words) == ("opposite directions" in sentence)


@pytest.fixture(scope="module")
def screen_data():
    adata, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=40, hidden=16, n_doubles=3,
                              cells_per_condition=30, seed=2)
    doubles = sorted(c for c in adata.obs["condition"].unique() if "+" in c)
    return adata, doubles


def _small_model(adata, holdout, n_members=None):
    m = pc.PDAE.from_anndata(adata, seed=0, n_members=n_members, latent_dim=3, hidden_dims=(16,), noise_dim=2,
                             n_sources=4)
    m.fit(adata, holdout=holdout, max_epochs=2, batch_size=64, accelerator="cpu")
    return m


@pytest.mark.parametrize("n_members", [None, 3])
def test_pair_interaction_matches_the_screen_row(screen_data, n_members):
    adata, doubles = screen_data
    model = _small_model(adata, doubles[:1], n_members)
    table = screen_pairs(model, adata, genes="all").set_index("pair")
    held = doubles[0]
    a, b = held.split("+")
    res = pair_interaction(model, adata, a, b, genes="all")
    row = table.loc[held]
    for key in ("c1", "c2", "magnitude", "normalised_residual"):
        assert res.predicted[key] == pytest.approx(row[key], rel=1e-6, abs=1e-9), key
    assert res.observed["magnitude"] == pytest.approx(row["observed_magnitude"], rel=1e-6)
    assert res.measured and res.held_out and not res.in_training
    assert res.description.startswith("predicted ") and res.observed_description
    assert res.n_members == model.n_members and len(res.member_calls) == model.n_members
    if n_members:
        assert res.spread["magnitude"] == pytest.approx(row["magnitude_spread"], rel=1e-6)
        n, call = re.fullmatch(r"(\d) of 3 networks call it (synergy|buffering|additive)", res.agreement).groups()
        assert int(n) == sum(c.split(";")[0] == call for c in res.member_calls) >= 1
    else:
        assert np.isnan(res.spread["magnitude"]) and res.agreement is None
    # a pair the data never measured: predicted only
    unmeasured = next(p for p in table.index if not table.loc[p, "measured"])
    res = pair_interaction(model, adata, *unmeasured.split("+"), genes="all")
    assert res.observed is None and not res.measured and res.observed_description is None
    with pytest.raises(pc.PDAEError):
        pair_interaction(model, adata, a, a)


def test_pair_ranking_and_composed_pair(screen_data):
    adata, doubles = screen_data
    model = _small_model(adata, doubles[:1])
    table = screen_pairs(model, adata, genes="all")
    ranked = explore.pair_ranking(table, "buffering")
    assert ranked["magnitude"].is_monotonic_increasing and list(ranked["rank"]) == list(range(1, len(table) + 1))
    status = dict(zip(ranked["pair"], ranked["status"]))
    assert status[doubles[0]] == "held out"
    assert {status[d] for d in doubles[1:]} == {"in training"}
    assert set(ranked["call"].str.split(";").str[0]) <= {"synergy", "buffering", "additive", "not measurable"}
    assert explore.composed_pair(model, {"P1": 1.0, "P2": 1.0}) == ("P1", "P2")
    assert explore.composed_pair(model, {"P1": 1.0, "P2": 0.5}) is None  # a dose other than 1
    assert explore.composed_pair(model, {"P1": 1.0, "P2": 0.0}) is None  # one part only
    assert explore.composed_pair(model, {"P1": 1.0, "P2": 1.0, "P3": 1.0}) is None


# ---- the corrected (stacked) estimate -------------------------------------------------------------
def stacked_table() -> pd.DataFrame:
    t = pair_table(spread=True)
    for col in ("magnitude", "normalised_residual"):
        t[f"{col}_stacked"] = t[col][::-1].to_numpy()  # another order than the model's
        t[f"{col}_stacked_lo"], t[f"{col}_stacked_hi"] = 0.8 * t[f"{col}_stacked"], 1.5 * t[f"{col}_stacked"]
    return t


def test_heatmap_of_the_corrected_estimate_shows_its_column_and_keeps_the_spread():
    t = stacked_table()
    fig = fi.pair_heatmap(t, "synergy", estimate="stacked")
    names, want = fi.pair_matrix(t, "magnitude_stacked")
    main, spread = heatmaps(fig)
    np.testing.assert_allclose(z_array(main), want, equal_nan=True)
    assert main.zmid == 1.0 and "magnitude, corrected" in fig.layout.title.text
    np.testing.assert_allclose(z_array(spread), fi.pair_matrix(t, "magnitude_spread")[1], equal_nan=True)
    # Most uncertain reads the networks' spread either way
    np.testing.assert_allclose(z_array(heatmaps(fi.pair_heatmap(t, "uncertain", estimate="stacked"))[0]),
                               fi.pair_matrix(t, "normalised_residual_spread")[1], equal_nan=True)


def test_scatter_of_the_corrected_estimate_has_its_asymmetric_likely_range():
    t = stacked_table()
    fig = fi.observed_scatter(t, "normalised_residual", estimate="stacked")
    pts = [tr for tr in fig.data if tr.mode and "markers" in tr.mode]
    held = next(tr for tr in pts if tr.text[0] == "A+C")
    row = t[t["pair"] == "A+C"].iloc[0]
    assert held.y[0] == pytest.approx(row.normalised_residual_stacked)
    assert held.error_y.array[0] == pytest.approx(0.5 * row.normalised_residual_stacked)
    assert held.error_y.arrayminus[0] == pytest.approx(0.2 * row.normalised_residual_stacked)
    assert "corrected by the measured pairs" in fig.layout.yaxis.title.text
    model = fi.observed_scatter(t, "normalised_residual")
    m = next(tr for tr in model.data if tr.mode and "markers" in tr.mode and tr.text[0] == "A+C")
    assert m.y[0] == pytest.approx(row.normalised_residual)
    assert m.error_y.array[0] == pytest.approx(m.error_y.arrayminus[0])  # the spread: symmetric
