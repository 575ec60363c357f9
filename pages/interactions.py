"""Interactions: every pair of the perturbations the model saw alone, predicted and scored as a
genetic interaction (Norman et al. 2019), ranked by the pairs worth testing next; one click
opens a pair in Compose."""

from __future__ import annotations

import numpy as np
import streamlit as st

from pages import common
from pdae_core import explore
from pdae_core.errors import PDAEError
from pdae_core.eval.pair_screen import SCORES, has_stacked, screen_singles
from pdae_core.plot import interactions as fi

common.init_state()
ss = st.session_state
st.title("Interactions")
with st.expander("How to read this page"):
    st.markdown(
        "Each square of the heatmap is a **pair of perturbations**, predicted by the model from control cells. "
        "Its colour says how the pair is predicted to interact: **synergy** (the pair changes genes more than its "
        "two parts added together), **buffering** (less), or **non-additivity** (how much of the pair's change the "
        "sum of its parts does not explain). Squares marked as measured were also measured in the data; *held out* "
        "ones are a fair test, because the model never saw them. With an ensemble (several networks), the spread "
        "says how sure the model is; **Pairs to test next** favours pairs predicted to interact strongly *and* "
        "where the model is unsure. These are predictions: a pair is worth testing, not proven. Click a pair in the "
        "table to open it in Compose. Words are explained on the Glossary page."
    )
ds = common.require_dataset()
model_key, model = common.require_model(ds)
reg = model.registry

KEYS = ("ia_score", "ia_pair", "ia_spread", "ia_scatter", "ia_estimate", "ia_plan_cells", *common.PAIR_DEFAULTS)
common.restore_widgets(*KEYS)
for k, v in common.PAIR_DEFAULTS.items():
    ss.setdefault(k, v)

singles = screen_singles(model)
if len(singles) < 2:
    st.info(f"The model saw {len(singles)} perturbation(s) alone in training; a pair screen needs at least two.")
    st.stop()
K = len(singles)
st.caption(
    f"Every pair of the {K} perturbations the model saw alone in training ({K * (K - 1) // 2:,} pairs) is predicted "
    "from control cells and scored as a genetic interaction (Norman et al. 2019): does the pair change genes more, "
    "less, or otherwise than its two parts?"
)
ensemble = model.n_members > 1
scores = [s for s in SCORES if ensemble or s != "uncertain"]
if ss.get("ia_score") not in scores:
    ss.ia_score = "test_next"


def _new_score() -> None:  # a new ranking starts from its first pair
    ss.pop("ia_pair", None)
    ss.get("_kept", {}).pop("ia_pair", None)


controls = st.columns([2, 2, 4] if ensemble else [2, 6], gap="large", vertical_alignment="bottom")
c_score, c_read = controls[0], controls[-1]
score = c_score.selectbox("Rank pairs by", scores, key="ia_score", format_func=fi.SCORE_LABELS.get,
                          on_change=_new_score,
                          help="Pairs to test next: non-additivity plus its spread across networks (an upper "
                          "confidence score). Synergy / buffering: magnitude. Least additive: non-additivity. "
                          "Most uncertain: spread of the non-additivity across networks (ensembles only).")
if ensemble:
    ss.setdefault("ia_spread", True)
    show_spread = controls[1].toggle("Show the spread", key="ia_spread",
                                  help="A second heatmap: how much the networks of the ensemble disagree on each pair.")
else:
    show_spread = False
with c_read.expander("What the numbers mean", icon=":material/help:"):
    st.markdown(
        "- **Magnitude**: the pair's change is fitted as `c1·A + c2·B` (A, B: the changes of the two parts alone) "
        "and magnitude = √(c1² + c2²). By the convention of Norman et al. (2019), above 1 is called **synergy**, "
        "below 1 **buffering**. Careful: a pair that is exactly the sum of its parts (c1 = c2 = 1) has magnitude "
        "√2 ≈ 1.41, so a magnitude between 1 and 1.41 is called synergy yet is below the plain sum; read it with "
        "the non-additivity.\n"
        "- **Non-additivity** = ‖AB − A − B‖ / ‖A + B‖: how far the pair is from the plain sum of its parts, "
        "relative to that sum (0 = exactly additive, 0.5 = the part the sum misses is half its size).\n"
        "- **Genes departing most from the sum**: the three genes whose predicted change with the pair differs "
        "most from the sum of their changes with each part (negative: lower than the sum). Open the pair in "
        "Compose for every gene, with the measured departure when the pair was measured.\n"
        "- **Pairs to test next**: non-additivity + κ × its spread across networks, i.e. pairs predicted to "
        "interact or about which the model is unsure: the experiments that teach most. With one network it is "
        "the non-additivity.\n"
        "- **Marks**: ○ measured and held out from training (a true test: compare predicted and observed on the "
        "right); □ measured and used in training.\n"
        "- The pair's predicted change is compared with the **measured** changes of its two parts when the "
        "loaded data have them (as the benchmarks score a prediction), otherwise with the model's own predictions "
        "of the parts; *Settings and technical details* says which. Either way it is a prediction, not a "
        "measurement."
    )

if not ensemble:
    other = common.bundled_ensemble(model, model_key)
    info, load = st.columns([6, 2], vertical_alignment="center") if other else (st, None)
    info.caption(
        ":material/info: **One network: no uncertainty.** To see how sure the model is, "
        + ("load the bundled ensemble of the same data" if other else
           "train an ensemble (`pdae train --ensemble 5 ...`) and load it on the Model page")
        + ": each network predicts every pair, and their spread is the uncertainty (shown next to the heatmap, "
        "as ± in the table, and as the ranking *Most uncertain*)."
    )
    if other and load.button(f"Load the ensemble of {other[1]} networks", key="ia_load_ensemble",
                             icon=":material/stacks:", help=f"The bundled checkpoint {other[0]}: the same genes and "
                             "perturbations, several networks trained with different seeds."):
        ss.model_key = f"bundled:{other[0]}"
        st.rerun()
n_cells, genes, kappa = common.pair_settings()
plan_cells = 0
if getattr(getattr(model, "calibration", None), "cell_noise", None) is not None:  # ranges for a planned experiment
    ss.setdefault("ia_plan_cells", 0)
    plan_cells = int(st.number_input(
        "Cells per pair in your experiment (0: off)", 0, 1_000_000, step=10, key="ia_plan_cells",
        help="Plan a follow-up: the table adds the non-additivity each pair would show measured with this many "
        "cells. The mean of a few cells is noisy and noise makes a pair look less additive, so the range is wider "
        "and higher for fewer cells; it adds that noise (the cell-to-cell variance of the calibration pairs) to "
        "the model's own error."))
try:
    screen = common.pair_screen(ds.key, model_key, n_cells, genes, kappa, _model=model, _adata=ds.adata,
                                cells=plan_cells)
except PDAEError as e:
    st.error(str(e))
    st.stop()
estimate = "model"
if has_stacked(screen):  # a cross-fitted ensemble whose training pairs are measured here: the corrected estimate
    chk, n_cal = screen.attrs["stacked_check"], screen.attrs["stacked_doubles"]
    ss.setdefault("ia_estimate", "stacked")
    estimate = st.radio(
        "Estimate", ["stacked", "model"], key="ia_estimate", horizontal=True, format_func=fi.ESTIMATE_LABELS.get,
        on_change=_new_score,
        help="Corrected: the model's predicted interaction, adjusted by what the measured training pairs teach "
        "(how the model's predictions relate to the observed ones, how strong each single is, and how each "
        "perturbation tends to combine). Details below the table.")
    st.caption(
        f":material/tune: **Corrected by {n_cal} measured training pairs.** On those pairs, each predicted without "
        f"itself, the corrected non-additivity ranks the observed one with Spearman ρ "
        f"{chk['normalised_residual']['stacked']:.2f}, the model alone {chk['normalised_residual']['model']:.2f} "
        f"(magnitude: {chk['magnitude']['stacked']:.2f} vs {chk['magnitude']['model']:.2f}).")
elif "stacked_note" in screen.attrs:
    st.caption(f":material/info: No corrected estimate: {screen.attrs['stacked_note'].removeprefix('no stacked estimate: ')}.")
ranked = explore.pair_ranking(screen, score, estimate)
measured = ranked[ranked["measured"]]
m = st.columns(4)
m[0].metric("Pairs", f"{len(ranked):,}")
m[1].metric("Singles", K)
m[2].metric("Measured pairs", len(measured), help="Pairs with cells in the loaded dataset.")
m[3].metric("Networks", model.n_members, help="Members of the ensemble (1: a single network, no uncertainty).")

compare = measured[measured["observed_magnitude"].notna()]
left, right = st.columns([2, 1], gap="large") if len(compare) else (st.container(), None)
with left:
    st.plotly_chart(fi.pair_heatmap(ranked, score, show_spread=show_spread, estimate=estimate), width="stretch",
                    config=common.PLOT_CONFIG, theme=None, key="ia_heatmap")
if right is not None:
    with right:
        ss.setdefault("ia_scatter", "magnitude")
        metric = st.radio("Compare", ["magnitude", "normalised_residual"], key="ia_scatter", horizontal=True,
                          format_func=fi.METRIC_NAMES.get)
        st.plotly_chart(fi.observed_scatter(compare, metric, estimate=estimate), width="stretch", config=common.PLOT_CONFIG,
                        theme=None, key="ia_scatter_plot")
        held = int(compare["held_out"].sum())
        st.caption(f"The {len(compare)} measured pair(s) with cells of both parts; {held} held out from training "
                   "(true tests). Error bars: " + ("likely range of the corrected estimate; pairs used in training "
                                                  "also taught the correction, so only held-out ones are a fair test."
                                                  if estimate == "stacked" else "spread across networks."))

st.subheader(f"Ranked pairs: {fi.SCORE_LABELS[score].lower()}")
cols = ["rank", "pair", "call", "top_departures", "magnitude", "magnitude_spread", "normalised_residual", "normalised_residual_spread",
        "test_next", "status", "observed_magnitude", "observed_normalised_residual"]  # dominance: in the call
if not ensemble:  # no spread; the test-next score is the non-additivity
    cols = [c for c in cols if not c.endswith("_spread") and c != "test_next"]
if "residual_range" in ranked:  # a cross-fitted ensemble: calibrated intervals
    cols.insert(cols.index("normalised_residual") + 1, "residual_range")
if "cells_range" in ranked:  # and what a planned experiment would show
    cols.insert(cols.index("normalised_residual") + 1 + ("residual_range" in cols), "cells_range")
if estimate == "stacked":  # the corrected estimate first; the model's own metrics after it
    cols[cols.index("magnitude"): cols.index("magnitude")] = ["magnitude_stacked", "normalised_residual_stacked",
                                                              "stacked_range"]
    cols = [c for c in cols if c not in ("test_next", "residual_range", "magnitude_spread")]
if not len(measured):
    cols = [c for c in cols if not c.startswith("observed_")]
view = ranked[cols].copy()
for c in ("observed_magnitude", "observed_normalised_residual"):  # text: blank (not "None") where not measured
    if c in view:
        view[c] = [f"{v:.2f}" if np.isfinite(v) else "" for v in view[c]]
view = view.rename(columns=fi.PAIR_TABLE_LABELS)
ss["ia_order"] = ranked["pair"].tolist()


def _pick_row() -> None:
    rows = ss[f"ia_table_{score}"].selection.rows
    if rows:
        ss.ia_pair = ss["ia_order"][rows[0]]


number = {fi.PAIR_TABLE_LABELS[c]: st.column_config.NumberColumn(format="%.2f") for c in cols
          if c not in ("rank", "pair", "call", "top_departures", "status", "observed_magnitude", "observed_normalised_residual",
                       "residual_range", "stacked_range", "cells_range")}
st.dataframe(view, hide_index=True, width="stretch", height=360, key=f"ia_table_{score}", on_select=_pick_row,
             selection_mode="single-row", column_config={**number,
                 "Measured?": st.column_config.TextColumn(help="held out: measured, never seen in training (a true "
                                                          "test); in training: measured and used to train"),
                 "Predicted interaction": st.column_config.TextColumn(width="medium"),
                 "Non-additivity, likely range": st.column_config.TextColumn(
                     help=f"Where the true non-additivity should lie {screen.attrs.get('interval_level', 0.8):.0%} "
                     "of the time: calibrated on training pairs that each network did not see (cross-fitted "
                     "ensemble)."),
                 "Non-additivity your experiment would show": st.column_config.TextColumn(
                     help=f"The model's non-additivity as an experiment measuring the pair with {plan_cells} cells "
                     f"would show it, {screen.attrs.get('interval_level', 0.8):.0%} of the time: the noise of that "
                     "many cells added to the model's own error."),
                 "Corrected non-additivity, likely range": st.column_config.TextColumn(
                     help=f"Where the true non-additivity should lie {screen.attrs.get('stacked_level', 0.8):.0%} of "
                     "the time, from the corrected estimate's errors on the measured training pairs, each left out "
                     "in turn.")})

pairs = ss["ia_order"]
if ss.get("ia_pair") not in pairs:
    ss.ia_pair = pairs[0]
calls = dict(zip(ranked["pair"], ranked["call"]))
ranks = dict(zip(ranked["pair"], ranked["rank"]))
p1, p2, p3 = st.columns([4, 3, 2], vertical_alignment="bottom")
pair = p1.selectbox("Pair (or select a row of the table)", pairs, key="ia_pair",
                    format_func=lambda p: f"#{ranks[p]} {p} · {calls[p]}")
if p2.button(f"Open {pair} in Compose", type="primary", key="ia_open", icon=":material/science:"):
    row = ranked.loc[ranked["pair"] == pair].iloc[0]
    ss.compose_perts = [row["a"], row["b"]]
    for p in (row["a"], row["b"]):
        ss[f"w:{p}"] = 1.0
    common.remember_widgets(*KEYS)
    common.remember_widgets("compose_perts", f"w:{row['a']}", f"w:{row['b']}")
    st.switch_page("pages/compose.py")
p3.download_button("Download all pairs (.csv)", ranked.to_csv(index=False).encode(), file_name="pairs.csv",
                   mime="text/csv", key="ia_csv")

with st.expander("Settings and technical details"):
    a = screen.attrs
    n_ctrl = int((ds.adata.obs[reg.perturbation_key].astype(str) == reg.control_label).sum())
    gene_words = {"expressed": "genes expressed in the control cells (mean above the threshold, as in the paper)",
                  "all": "all genes"}.get(a["genes"], a["genes"])
    st.markdown(
        f"- **Gene set**: {a['n_genes']} genes: {gene_words}. When fewer than 50 genes pass the expression "
        "threshold (log-normalised data: mean above 0.1; counts: 0.5), all genes are used.\n"
        f"- **Moved cells**: {a['n_source_cells']:,} per single and per pair"
        + (" and per network (the networks share the cells asked for, each moving the same ones)" if ensemble else "")
        + f", from the {n_ctrl:,} control cells of {ds.label} (a seeded sample; with fewer control cells, each is "
        "moved several times with fresh noise)."
        + (" The single, the other single and the pair move the same cells with the same noise, so the non-additive "
           "part carries no noise of its own." if a["single_effects"] == "model" else "") + "\n"
        f"- **Networks**: {model.n_members}" + (" (an ensemble: metrics are the mean over networks, ± their "
                                                 "standard deviation)" if ensemble else " (no spread)") + ".\n"
        + (f"- **Likely ranges**: split-conformal intervals at {a['interval_level']:.0%}, calibrated on "
           f"{a['calibration_doubles']} measured training pairs, each left out of one network (cross-fitted "
           "ensemble; `pdae train --ensemble 5 --cross-fit`).\n" if "interval_level" in a else "")
        + (f"- **Corrected estimate** (stacking): for each measured training pair, the network that did not "
           "train on it predicted its magnitude and non-additivity; a ridge regression learns the observed log "
           "metric from those predictions, from the sizes and the angle of the two singles' measured changes and "
           "from which perturbations the pair holds (how each tends to combine), and is blended with a prediction "
           "from the measured pairs of similar singles (parts that change genes alike tend to combine alike), each "
           "weighted by how well it predicted the training pairs left out one at a time. It is applied to every pair whose "
           f"singles are measured; {a['stacked_doubles']} training pairs taught it (`pdae_core.eval.stacking`). "
           "On the Norman 2019 pseudobulk design it ranks held-out pairs better than the model alone, and as "
           "well as the prediction from similar measured pairs alone (benchmarks/results/screen_stacking.md).\n" if "stacked_doubles" in a else "")
        + ("- **Single effects**: measured (the mean change of each part's cells in the loaded data), so a pair's "
           "metrics compare its predicted change with its parts as measured.\n" if a["single_effects"] == "observed"
           else "- **Single effects**: the model's predictions (a part is not measured in the loaded data), so a "
           "pair's metrics are the model's own second difference; they ranked held-out pairs worse than the "
           "measured parts did on the Norman 2019 design (benchmarks/results/screen_stacking.md).\n")
        + (f"- **No likely ranges**: {a['interval_note']}.\n" if "interval_note" in a else "")
        + (f"- **Your experiment**: ranges for {int(a['cells'])} cells per pair (`pdae interactions ... --cells "
           f"{int(a['cells'])}`; `pdae_core.eval.cell_noise`).\n" if "cells" in a else "")
        + (f"- **No ranges for your experiment**: {a['cells_note']}.\n" if "cells_note" in a else "")
        + "- **Method**: each network predicts the mean change from control of A, B and A+B; the weights c1, c2 are "
        "fitted by least squares without intercept on those mean changes (the paper used Theil-Sen; least "
        "squares keeps thousands of pairs to seconds). Compose adds the model fit (distance correlation) of the "
        "pair it shows.\n"
        f"- **Time**: {a['seconds']:.1f} s for {len(ranked):,} pairs (cached for this dataset, model and settings). "
        f"The same screen from the command line: `pdae interactions CHECKPOINT --dataset {ds.label} --out pairs.csv`."
    )
    s1, s2, s3 = st.columns(3)
    s1.number_input("Control cells", 20, 5000, step=20, key="ia_cells",
                    help="Control cells moved to every single and pair; more cells, less noise, more time. "
                    "An ensemble's networks share them (each at least 128).")
    s2.selectbox("Gene set", ["expressed", "all"], key="ia_genes")
    s3.number_input("κ of the test-next score", 0.0, 10.0, step=0.5, key="ia_kappa",
                    help="Weight of the spread in non-additivity + κ × spread (ensembles only).")
common.remember_widgets(*KEYS)
