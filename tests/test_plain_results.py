"""Results in plain words: the one-sentence summary of a benchmark, error bars that show the
intervals the page claims, and the glossary (issue 16, "Speak biology")."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdae_core.eval.heldout import model_phrase, plain_summary
from pdae_core.glossary import GLOSSARY, lookup
from pdae_core.plot.benchmark import condition_bars
from pdae_core.plot.style import NOISE

ROOT = Path(__file__).resolve().parents[1]


def _table(values: dict[str, list[float]], seeds: int = 1) -> pd.DataFrame:
    rows = []
    for model, vals in values.items():
        for i, v in enumerate(vals):
            for s in range(seeds):
                rows.append({"model": model, "condition": f"C{i}", "seed": s, "energy_distance": v + 0.001 * s})
    return pd.DataFrame(rows)


def test_plain_summary_names_the_strongest_baseline_and_counts_honestly():
    t = _table({"pdae": [0.5, 0.1, 0.3, 0.4, 0.2], "additive": [0.2, 0.2, 0.2, 0.2, 0.2],
                "control": [0.9, 0.9, 0.9, 0.9, 0.9], NOISE: [0.01] * 5}, seeds=2)
    s = plain_summary(t, "pdae")
    # the additive baseline (mean 0.2) is the strongest; it is closer on 3 of 5, PDAE on 1, one tie
    assert s.startswith("On these 5 held-out conditions, the additive baseline is closer to what was measured "
                        "than PDAE on 3; PDAE is closer on 1; 1 tied")
    assert "noise floor" in s and "0.01" in s
    assert "predicting no change" not in s  # not the strongest


def test_plain_summary_when_the_model_wins_and_higher_is_better():
    t = _table({"pdae": [0.9, 0.8, 0.7], "linear": [0.5, 0.9, 0.1]})
    t = t.rename(columns={"energy_distance": "r2_delta"})
    s = plain_summary(t, "pdae", metric="r2_delta", lower_is_better=False)
    assert s.startswith("On these 3 held-out conditions, PDAE is closer to what was measured than the linear "
                        "baseline on 2; the linear baseline is closer on 1")
    assert "higher is better" in s and "noise floor" not in s


def test_plain_summary_without_model_or_baseline():
    t = _table({"pdae": [0.1, 0.2]})
    assert plain_summary(t, "pdae") is None
    assert plain_summary(t, "samsvae") is None
    assert model_phrase("scaled_additive") == "the scaled additive baseline" and model_phrase("pdae") == "PDAE"


def test_condition_bars_show_the_bootstrap_interval_with_one_seed():
    t = _table({"pdae": [0.5, 0.1], "additive": [0.2, 0.3]})
    t["energy_distance_lo"] = t["energy_distance"] - 0.05
    t["energy_distance_hi"] = t["energy_distance"] + 0.1
    fig = condition_bars(t)
    bar = next(d for d in fig.data if d.name == "pdae")
    assert bar.error_y.visible
    np.testing.assert_allclose(bar.error_y.array, [0.1, 0.1])
    np.testing.assert_allclose(bar.error_y.arrayminus, [0.05, 0.05])
    assert "bootstrap" in bar.customdata[0][1]


def test_condition_bars_use_the_seed_spread_when_there_are_seeds():
    t = _table({"pdae": [0.5, 0.1]}, seeds=3)
    t["energy_distance_lo"] = t["energy_distance"] - 0.05
    t["energy_distance_hi"] = t["energy_distance"] + 0.1
    bar = condition_bars(t).data[0]
    sd = t.groupby("condition")["energy_distance"].std().to_numpy()
    np.testing.assert_allclose(bar.error_y.array, sd)
    assert "sd over seeds" in bar.customdata[0][1]


def test_glossary_has_the_words_the_pages_use():
    for term in ("energy distance", "noise floor", "additive baseline", "extrapolation", "latent space", "dose"):
        assert len(lookup(term)) > 40
    assert "CRISPRa" in GLOSSARY["dose"] and "CRISPRi" in GLOSSARY["dose"]
    assert "sum of its changes with each part" in lookup("departure from the sum")  # Compose's gene view
    assert "not a likely range" in lookup("uncertainty (spread)")
    with pytest.raises(KeyError, match="terms: perturbation"):
        lookup("span")


def test_glossary_page_and_benchmark_sentence(data_dir):
    from streamlit.testing.v1 import AppTest

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    at.switch_page("pages/glossary.py").run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "Noise floor" in text and "Energy distance" in text
    at.text_input(key="glossary_query").input("CRISPRa").run()
    text = " ".join(m.value for m in at.markdown)
    assert "Dose" in text and "Noise floor" not in text
    at.switch_page("pages/benchmark.py").run()
    assert not at.exception
    said = [m.value for m in at.markdown if m.value.startswith("**On these 5 held-out conditions")]
    # one for the loaded model (against additive and no change), one for the saved norman19_devel results
    assert len(said) == 2 and all("PDAE" in s and "noise floor" in s for s in said), said
    assert "linear baseline" not in said[0] and "linear baseline" in said[1]


def test_plain_summary_says_about_zero_for_a_negative_noise_floor():
    t = _table({"pdae": [0.5, 0.1], "additive": [0.2, 0.3], NOISE: [-0.01, 0.002]})
    assert plain_summary(t, "pdae").endswith("the noise floor (the best any prediction can reach) about 0.")
