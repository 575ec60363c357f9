"""Compose (what-if): combine seen perturbations in latent space and compare the
predicted cells with control, the observed cells (when measured) and the additive
gene-space baseline: one shared map of the cells (coloured by kind or by a gene), gene
views, predicted against observed change per gene, and several models side by side
(the logic in :mod:`pdae_core.explore` and :mod:`pdae_core.compare`)."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from pages import common
from pdae_core import compare, explore, identity
from pdae_core.data.contexts import context_categories
from pdae_core.errors import PDAEError
from pdae_core.eval import departure
from pdae_core.glossary import lookup
from pdae_core.plot import cells as cf
from pdae_core.plot import compare as pcmp
from pdae_core.plot import interactions as pint
from pdae_core.plot import style

common.init_state()
ss = st.session_state
st.title("Compose a what-if combination")
with st.expander("How to read this page"):
    st.markdown(
        "- **On the left**, choose the perturbations to combine and their doses (1 = as measured, 0 = left out), "
        "or start from a measured combination. The model moves the **source cells** (control by default) to "
        "the combination and gives you predicted cells.\n"
        "- **The coloured box** says in plain words whether the model can be trusted for this combination; a "
        "combination *held out* from training has measured cells the model never saw: a fair test.\n"
        "- **The map** (UMAP) places every cell by its expression: grey dots are control cells, red ones the "
        "predicted cells, blue ones the measured (observed) cells when the combination was measured. Predicted "
        "cells that sit on the observed ones are a good prediction. Colour the map by a gene to see where it "
        "is expressed.\n"
        "- **Gene views**: the expression of chosen genes per group, and the genes the prediction changes most. "
        "For a measured combination, **predicted versus observed change** shows one point per gene: on the "
        "dashed line the prediction is exact; *r* (1 at best) says how well the pattern of changes is "
        "reproduced, beside the *additive baseline* (the two single effects simply added).\n"
        "- **Compare models** puts several models and baselines on the same combination: for a measured one, a "
        "lower *energy distance* means predicted cells closer to the measured cells.\n"
        "Words are explained on the Glossary page."
    )
ds = common.require_dataset()
model_key, model = common.require_model(ds)
reg = model.registry
st.caption(
    "Each perturbation is a shift in the model's latent space; a combination adds the shifts (weighted by dose). "
    "Source cells are encoded, moved and decoded into predicted cells."
)


@st.cache_resource(max_entries=8)
def dataset_summary(data_key: str, perturbation_key: str, control: str, separator: str, layer: str | None,
                    _adata, _reg) -> explore.DatasetSummary:
    """The dataset's conditions as this model's registry reads them: the same for every what-if, so
    counted once (a tenth of a second at 100,000 cells), not on each change."""
    return explore.summarize_dataset(_adata, _reg)


seen = model.seen_perturbations
summary = dataset_summary(ds.key, reg.perturbation_key, reg.control_label, reg.separator, reg.layer, ds.adata, reg)
conds = summary.conditions
combos = conds.loc[conds.kind == "combination", "condition"].tolist()
heldout = [c for c in model.holdout if c in set(conds.condition)]
CUSTOM = "Choose your own combination"
presets = [CUSTOM] + [f"{c} (held out)" for c in heldout] + [c for c in combos if c not in heldout]


def _apply_preset() -> None:
    name = ss.compose_preset.removesuffix(" (held out)")
    if name == CUSTOM:
        return
    parts = [p for p in reg.parse(name) if p in seen]
    ss.compose_perts = parts
    for p in parts:
        ss[f"w:{p}"] = 1.0


KEYS = ("compose_perts", "compose_source", "compose_context", "compose_n", "compose_show_add", "compose_genes", "compose_genes_target")
back = "compose_n" not in ss  # first run of this page since another page (or a new session): widgets restored
common.restore_widgets(*KEYS, prefix="w:")
if "compose_perts" not in ss or any(p not in seen for p in ss.compose_perts):
    first = heldout[0] if heldout else (combos[0] if combos else "")
    ss.compose_perts = [p for p in reg.parse(first) if p in seen][:2] if first else seen[:2]

# A dose slider that was not on the page in the previous run gets its value assigned here, so the browser
# is told it: otherwise it shows the slider's minimum (-1) while the server keeps another value, and the
# next action sends the -1 back. A perturbation (re-)added on this page starts as measured, at dose 1;
# back from another page, each keeps its remembered dose.
shown_before = None if back else ss.get("_compose_shown")
for p in ss.compose_perts:
    k = f"w:{p}"
    if shown_before is not None and p in shown_before and k in ss:
        continue
    ss[k] = float(ss.get(k, 1.0)) if shown_before is None else 1.0

# The preset box names the measured combination now composed, or "Choose your own combination":
# never a preset the perturbations or doses no longer match.
now = {p: float(ss[f"w:{p}"]) for p in ss.compose_perts}
match = explore.matching_condition(reg, now, heldout + [c for c in combos if c not in heldout])
shows = CUSTOM if match is None else f"{match} (held out)" if match in heldout else match
if "compose_preset" not in ss or ss.get("_compose_now") != now or ss.compose_preset not in (CUSTOM, shows):
    ss.compose_preset = shows  # the composition changed (or the box is stale): say what it is
ss._compose_now = now

left, right = st.columns([1, 2], gap="large")
with left:
    st.selectbox("Start from a measured combination", presets, key="compose_preset", on_change=_apply_preset,
                 help="Combinations held out during training are true tests of the model.")
    perts = st.multiselect("Perturbations to combine", seen, key="compose_perts",
                           help="Elementary perturbations the model saw in training.")
    weights = {}
    for p in perts:
        ss.setdefault(f"w:{p}", 1.0)  # set above; a safety net
        weights[p] = st.slider(f"{p} dose", -1.0, 3.0, step=0.1, key=f"w:{p}",
                               help="1 = as measured; 0 removes it; doses other than 1 extrapolate along its shift.")
    sources = [c for c in conds.condition if c == reg.control_label] + [c for c in conds.condition if c != reg.control_label]
    if ss.get("compose_source") not in sources:
        ss.pop("compose_source", None)
    src = st.selectbox("Source cells", sources, key="compose_source",
                       help="Cells that are encoded, moved to the target and decoded. Control by default.")
    src_context = None
    if reg.covariate_key is not None and reg.covariate_key in ds.adata.obs.columns:
        ctx_word = reg.covariate_key.replace("_", " ")
        contexts = ["(all)", *context_categories(ds.adata, reg.covariate_key)]
        if ss.get("compose_context") not in contexts:
            ss.pop("compose_context", None)
        pick = st.selectbox(f"Source {ctx_word}", contexts, key="compose_context",
                            help=f"Predict from the cells of one {ctx_word} only: the verdict then says whether the "
                            f"target was measured in that {ctx_word}, and the observed cells are those of that "
                            f"{ctx_word}.")
        src_context = None if pick == "(all)" else pick
    ss.setdefault("compose_n", 300)
    ss.setdefault("compose_show_add", False)
    n_src = st.slider("Predicted cells", 20, 2000, step=20, key="compose_n",
                      help="Source cells are subsampled to this number; when there are fewer, each is decoded "
                      "several times with fresh decoder noise.")
    show_add = st.toggle("Show additive baseline cells in the UMAP", key="compose_show_add")
ss._compose_shown = list(perts)
common.remember_widgets(*KEYS, prefix="w:")

if not any(w != 0 for w in weights.values()):
    right.info("Choose at least one perturbation with a non-zero dose.")
    st.stop()

try:
    additive = common.additive_baseline(ds.key, model_key, model, ds.adata)
    result = explore.what_if(model, ds.adata, weights, source_condition=src, max_source_cells=n_src,
                              additive=additive, n_cells=n_src, source_context=src_context)
except PDAEError as e:
    right.error(str(e))
    st.stop()


def interaction_box(a: str, b: str) -> None:
    """The predicted interaction of the pair a + b (and the observed one when measured)."""
    n_cells, genes, _ = common.pair_settings()
    try:
        res = common.pair_interaction(ds.key, model_key, a, b, n_cells, genes, _model=model, _adata=ds.adata)
    except PDAEError as e:
        st.caption(f"No interaction score for {a} + {b}: {e}")
        return
    pred, spread, obs = res.predicted, res.spread, res.observed

    def pm(key: str) -> str:
        return f"{pred[key]:.2f}" + (f" ± {spread[key]:.2f}" if res.n_members > 1 else "")

    with st.container(border=True, key="compose_interaction"):
        st.markdown(f"**Interaction of {a} + {b}** · {res.description[0].upper()}{res.description[1:]}")
        where = "held out from training: a true test" if res.held_out else (
            "used in training" if res.in_training else "not used by the model")
        observed = (f"| **observed** ({where}) | {obs['magnitude']:.2f} | {obs['normalised_residual']:.2f} |"
                    if obs is not None else f"| **observed** | not measured in {ds.label} | |")
        sk = res.stacked
        corrected = ("" if sk is None else "| **corrected** by measured pairs (likely range) | "
                     + " | ".join(f"{sk[k]:.2f} ({sk[k + '_lo']:.2f} to {sk[k + '_hi']:.2f})"
                                  for k in ("magnitude", "normalised_residual")) + " |\n")
        st.markdown(
            "| | magnitude | non-additivity |\n|---|---|---|\n"
            f"| **predicted** | {pm('magnitude')} | {pm('normalised_residual')} |\n{corrected}{observed}",
            help="Magnitude: √(c1² + c2²) of the fit c1·A + c2·B; above 1 synergy, below 1 buffering (Norman et al. "
            "2019); a pair exactly the sum of its parts has √2 ≈ 1.41. Non-additivity: ‖AB − A − B‖ / ‖A + B‖, "
            "0 = exactly the sum of its parts."
            + (f" Corrected: the prediction adjusted by what {int(sk['doubles'])} measured training pairs teach "
               "(see the Interactions page); range: 80% likely." if sk is not None else ""),
        )
        if obs is not None:
            st.markdown(f"Observed in {ds.label}: {res.observed_description}")
        cal = getattr(model, "calibration", None)
        if cal is not None:  # a cross-fitted ensemble: calibrated ranges
            (m_lo, m_hi), (r_lo, r_hi) = (cal.metric_range(k, pred[k], 0.8) for k in ("magnitude", "normalised_residual"))
            st.markdown(f"Likely range (80%): magnitude **{m_lo:.2f} to {m_hi:.2f}**, non-additivity **{r_lo:.2f} to "
                        f"{r_hi:.2f}**", help=f"Calibrated on {cal.n} measured combinations in training, each left out "
                        "of one network and predicted by it: 8 in 10 of them fell inside ranges this wide.")
        at = res.at_cells
        if at is not None:  # a measured pair: is what was seen within what its few cells allow?
            inside = [res.observed_within(k) for k in ("magnitude", "normalised_residual")]
            verdict = ("The observed values fall inside both ranges: the measurement agrees with the prediction."
                       if all(inside) else "The observed " + " and ".join(
                           w for w, ok in zip(("magnitude", "non-additivity"), inside) if not ok)
                       + " falls outside: the pair departs from the prediction more than its cells' noise explains.")
            if res.in_training:  # the networks learnt from these cells: agreement is expected, not a test
                verdict += " (The pair was used in training, so this is not a test of the model.)"
            st.markdown(
                f"With the **{int(at['cells'])} cells** this pair was measured with, an experiment would show "
                f"(80%): magnitude **{at['magnitude_lo']:.2f} to {at['magnitude_hi']:.2f}**, non-additivity "
                f"**{at['normalised_residual_lo']:.2f} to {at['normalised_residual_hi']:.2f}**. {verdict}",
                help="The mean of a few cells is noisy, and noise makes a pair look less additive than it is. "
                "These ranges add the noise expected from this many cells (the cell-to-cell variance of the "
                f"{cal.n} calibration combinations) to the model's own error, so they are wider for a pair "
                "measured with few cells and narrower for one with many.")
        other = None if res.agreement else common.bundled_ensemble(model, model_key)
        sure = (f"{res.agreement}; ± is the spread across the networks." if res.agreement else
                f"One network: no uncertainty (for a spread, load the bundled ensemble {other[0]} on the Model page "
                "or the Interactions page)." if other else
                "One network: no uncertainty (train an ensemble, `pdae train --ensemble 5`, for a spread).")
        singles = ("the parts as measured" if res.single_effects == "observed" else
                   "the model's own predictions of the parts")
        st.caption(f"{sure} {res.n_source_cells} cells moved from control, {res.n_genes} genes ({res.genes}), least squares "
                   f"on mean changes against {singles}; model fit {pred['model_fit']:.2f}.")
        st.page_link("pages/interactions.py", label="Every pair on the Interactions page", icon=":material/grid_on:")


COLOUR_KIND, COLOUR_GENE = "kind of cells", "a gene's expression"
COLOUR_KEYS = ("compose_colour", "compose_colour_gene")
common.restore_widgets(*COLOUR_KEYS)


def colour_control(res: explore.WhatIf) -> str | None:
    """'Colour cells by' above the map: the gene to colour by (None: by kind of cells). A gene that
    is not modelled gets a hint with close names, and the map stays coloured by kind."""
    c1, c2 = st.columns([1, 1])
    ss.setdefault("compose_colour", COLOUR_KIND)
    mode = c1.radio("Colour cells by", [COLOUR_KIND, COLOUR_GENE], key="compose_colour", horizontal=True,
                    help="By kind: control, predicted, observed (and additive baseline) cells. By a gene: each "
                    "cell's expression of that gene (log1p), whatever its kind.")
    if mode != COLOUR_GENE:
        common.remember_widgets(*COLOUR_KEYS)
        return None
    if not str(ss.get("compose_colour_gene") or "").strip():
        ss.compose_colour_gene = str(res.top_genes["gene"].iloc[0])  # the gene the prediction changes most
    typed = c2.text_input("Gene", key="compose_colour_gene", placeholder="e.g. HBG1",
                          help=f"A gene symbol (any case) among the {reg.n_genes:,} genes the model predicts.")
    common.remember_widgets(*COLOUR_KEYS)
    gene, hint = explore.find_gene(reg, typed)
    if gene is None:
        st.info(f"{hint} The map shows the kinds of cells.")
    return gene


def cell_map(ref, res: explore.WhatIf, coords, groups, hover, gene: str | None, title: str, colors=None, order=None):
    """The what-if map coloured by kind (``colors``/``order`` for other group names), or by ``gene``; at most
    :data:`~pdae_core.plot.cells.MAX_DRAWN` observed cells drawn (a random sample, said under the title)."""
    if gene is not None:
        values = explore.embedding_gene_values(ref, ds.adata, res, groups, gene, reg)
        return cf.expression_scatter(coords, values, hover, gene=gene, title=title, groups=groups,
                                     max_per_group=cf.WHAT_IF_CAPS)
    if colors is None:
        return cf.what_if_scatter(coords, groups, hover, title=title, max_per_group=cf.WHAT_IF_CAPS)
    return cf.embedding_scatter(coords, groups, hover, title=title, colors=colors, order=order,
                                max_per_group=cf.WHAT_IF_CAPS)


with right:
    verdict = explore.verdict_in_words(result.check, weights, explore.measured_alone(model),
                                       held_out=identity.held_out_here(model, result.target, src_context))
    show_verdict = {"info": st.info, "success": st.success, "warning": st.warning, "error": st.error}[verdict.level]
    show_verdict(verdict.markdown(result.target))
    ignores = identity.context_warning(model, reg)
    if ignores is not None:
        st.warning(ignores)
    if src_context is not None:
        try:
            kept = common.identity(ds.key, model_key, src_context, src, _model=model, _adata=ds.adata)
            (st.caption if kept.preserved else st.warning)(kept.in_words(reg.covariate_key))
        except PDAEError as e:
            st.caption(f"No identity check for {src_context}: {e}")
    with st.expander("Technical detail: why the model can (or cannot) predict this"):
        for line in verdict.details:
            st.caption(line)
    pair = explore.composed_pair(model, weights)
    if pair is not None:
        interaction_box(*pair)
    obs_n = 0 if result.observed is None else result.observed.n_obs
    drawn = (f" ({cf.MAX_DRAWN:,} of them, a random sample, drawn in the map and violins; the tables use all)"
             if obs_n > cf.MAX_DRAWN else "")
    st.caption(
        f"{result.predicted.n_obs:,} predicted cells from {src} · "
        + (f"{obs_n:,} observed cells of {result.target}{drawn}" if obs_n
           else f"{result.target} was not measured in this dataset")
        + (f" · additive baseline unavailable: {result.additive_note}" if result.additive_note else "")
    )
    ref = common.reference_embedding(ds.key, reg.perturbation_key, ds.adata)
    colour_gene = colour_control(result)
    what = "cells" if colour_gene is None else f"{colour_gene} expression"
    umap_title = f"{result.target}: {what} in one shared UMAP (gene space)"
    try:
        coords, groups, hover = explore.what_if_embedding(ref, result, include_additive=show_add)
        umap = cell_map(ref, result, coords, groups, hover, colour_gene, umap_title)
    except (PDAEError, ValueError) as e:  # the toggle is remembered: never let the overlay break the page
        if not show_add:
            raise
        st.caption(f"The additive baseline cells could not be drawn ({e}); the UMAP shows the others.")
        coords, groups, hover = explore.what_if_embedding(ref, result)
        umap = cell_map(ref, result, coords, groups, hover, colour_gene, umap_title)
    st.plotly_chart(umap, width="stretch", config=common.PLOT_CONFIG, theme=None, key="compose_umap")

table = result.top_genes
g1, g2 = st.columns([3, 2], gap="large")
with g1:
    top3 = table["gene"].head(3).tolist()
    if ss.get("compose_genes_target") != result.target:  # new target: show its top genes
        ss.compose_genes = top3
        ss.compose_genes_target = result.target
    if any(g not in set(reg.gene_names) for g in ss.compose_genes):
        ss.compose_genes = top3
    genes = st.multiselect("Genes (type to search)", reg.gene_names, key="compose_genes",
                           help="Distribution of each gene's expression per group.")
    common.remember_widgets("compose_genes", "compose_genes_target")
    violins = cf.gene_violins(explore.gene_values(result, genes, reg), genes, title="expression per group",
                              max_cells=cf.MAX_DRAWN) if genes else None
    if violins is not None:
        st.plotly_chart(violins, width="stretch", config=common.PLOT_CONFIG, theme=None, key="compose_violins")
with g2:
    bars = cf.delta_bars(table, n=15, title="top changed genes (mean vs control)")
    st.plotly_chart(bars, width="stretch", config=common.PLOT_CONFIG, theme=None, key="compose_bars")

if result.observed is not None:  # a measured target: the change per gene, predicted against observed
    st.subheader("Predicted versus observed change, gene by gene")
    agree = compare.change_agreement(table)
    deltas = {style.PREDICTED: table["predicted_delta"].to_numpy()}
    if result.additive is not None:
        deltas[style.ADDITIVE] = table["additive_delta"].to_numpy()
    corr = {style.PREDICTED: agree["predicted_delta"], style.ADDITIVE: agree["additive_delta"]}
    change_scatter = pcmp.change_panels(
        deltas, table["observed_delta"].to_numpy(), table["gene"], corr, colors=style.KIND_COLORS,
        title=f"{result.target}: change from control per gene, predicted against observed")
    st.plotly_chart(change_scatter, width="stretch", config=common.PLOT_CONFIG, theme=None,
                    key="compose_change_scatter")
    st.caption(compare.agreement_sentence(agree["predicted_delta"], agree["additive_delta"], reg.n_genes)
               + " Each point is a gene: its observed change in mean expression from control (x) against the "
               "predicted one (y); on the dashed line the prediction is exact.")



def departure_section(a: str, b: str):
    """Where the pair a + b departs from the sum of its parts, gene by gene (with the observed
    departure when the pair was measured); returns its chart (None when the pair has no score)."""
    n_cells, genes, _ = common.pair_settings()
    try:
        res = common.pair_interaction(ds.key, model_key, a, b, n_cells, genes, _model=model, _adata=ds.adata)
    except PDAEError:
        return None  # the interaction box above already says why
    table = res.genes_table
    st.subheader(f"Where {a} + {b} departs from the sum of its parts", help=lookup("departure from the sum"))
    st.caption(departure.describe_departures(table) + " " + (
        "Each gene's predicted change with the pair minus the sum of its changes with each part "
        + ("as measured" if res.single_effects == "observed" else "as the model predicts them") + "."))
    if res.recalibration is not None:
        st.caption(departure.recalibration_in_words(res.recalibration))
    if "observed_departure" in table.columns:
        st.markdown(departure.agreement_in_words(departure.departure_agreement(table), res.in_training))
    chart = pint.departure_chart(table, f"{a} + {b}")
    st.plotly_chart(chart, width="stretch", config=common.PLOT_CONFIG, theme=None, key="compose_departure")
    st.caption("Error bars: " + (
        "the likely range (80%) of each gene's change, calibrated on measured pairs the networks did not see."
        if "departure_lo" in table.columns else
        "how much the ensemble's networks disagree. This is not a likely range: on the demo's five held-out pairs "
        "fewer than 1 in 10 observed departures fell within it (benchmarks/results/demo_checkpoints.md). For "
        "calibrated ranges, train an ensemble with Calibrate likely ranges." if res.n_members > 1 else
        "none (one network)."))
    with st.expander("Every gene's departure, and how far to trust it"):
        st.markdown(
            "How well predicted departures matched measured ones, each pair predicted by a model that never saw it: "
            "on the Norman 2019 design (126 pairs as profiles) a calibrated ensemble's departures, reweighted gene by "
            "gene, correlated with the measured ones at 0.58 per pair (0.54 before reweighting) against 0.47 for scaling "
            "the sum alike and 0.56 for reading the departures of measured pairs whose parts look alike (no model), had "
            "the direction of 19 of the 20 largest right, and 81% of genes fell in their 80% ranges; on this demo's five "
            "held-out pairs, 0.51 for the "
            "bundled ensemble and 0.38 for one network, against 0.35 for the best uniform scaling of the sum; on "
            "the Schraivogel 2020 cells, where pairs have 1 to 25 cells, a calibrated ensemble's reweighted departures "
            "were level with scaling the sum alike (0.36 against 0.37; 0.28 before reweighting) and below reading the "
            "departures of pairs whose parts look alike (0.40). Details: "
            "docs/benchmarks.md.")
        st.dataframe(table.head(200).rename(columns=pint.DEPARTURE_TABLE_LABELS).style.format(precision=3, na_rep="–"),
                     hide_index=True, width="stretch", height=300)
        st.download_button("Download every gene's departure (.csv)", lambda t=table: t.to_csv(index=False).encode(),
                           file_name=f"departure_{a}_{b}.csv", mime="text/csv", key="dl_departure", on_click="ignore")
    return chart


departure_fig = departure_section(*pair) if pair is not None else None

st.subheader("Top changed genes")
show = table.head(50).rename(columns=style.GENE_TABLE_LABELS)
st.dataframe(show.style.format(precision=3, na_rep="–"), hide_index=True, width="stretch", height=320)
d1, d2, d3 = st.columns(3)
slug = result.target.replace("+", "_").replace(":", "-")
# the files are written when a button is clicked (on another thread, no rerun), not on every what-if change
d1.download_button("Download predicted cells (.h5ad)", lambda cells=result.predicted: common.h5ad_bytes(cells),
                   file_name=f"predicted_{slug}.h5ad", mime="application/octet-stream", key="dl_h5ad",
                   on_click="ignore")
d2.download_button("Download gene table (.csv)", lambda t=table: t.to_csv(index=False).encode(),
                   file_name=f"top_genes_{slug}.csv", mime="text/csv", key="dl_csv", on_click="ignore")
with d3:
    common.report_download(
        result, {"Cells in one shared UMAP": umap, "Expression per group": violins, "Top changed genes": bars,
                 "Predicted versus observed change": change_scatter if result.observed is not None else None,
                 "Where the pair departs from the sum of its parts": departure_fig},
        verdict, model_key, model, ds, source_condition=src)


# ---- several models side by side ------------------------------------------------------------
@st.cache_resource(show_spinner="Fitting the baseline…", max_entries=8)
def fitted_baseline(kind: str, data_key: str, model_key: str, _model, _adata):
    """A gene-space baseline fitted on the cells the loaded model was trained on (once per dataset and model)."""
    if kind == "additive":
        return common.additive_baseline(data_key, model_key, _model, _adata)
    return compare.fit_baseline(kind, _adata, _model)


def model_options() -> dict[str, str]:
    """Models to compare, key -> label: the loaded one, the bundled checkpoints and the models trained or
    uploaded in this session that fit the dataset, and the baselines."""
    out = {model_key: f"{common.model_label(model_key)} (loaded)"}
    for name in common.bundled_checkpoints():
        key = f"bundled:{name}"
        if key not in out and other_model(key) is not None:
            out[key] = common.model_label(key)
    for k in ss.get("trained", {}):
        key = f"trained:{k}"
        if key not in out and other_model(key) is not None:
            out[key] = common.model_label(key)
    for kind, (label, _) in compare.BASELINES.items():
        out[f"baseline:{kind}"] = label
    return out


def other_model(key: str):
    """The model of a key (None when it cannot be loaded or does not fit the dataset)."""
    if key == model_key:
        return model
    if key.partition(":")[0] not in ("trained", "bundled"):
        return None
    try:
        m = common.model_of(key)
    except (PDAEError, OSError):
        return None
    return m if m is not None and common.compatibility(m, ds) is None else None


def short_name(key: str, label: str) -> str:
    """The name of a compared model in figures and the table."""
    kind, _, rest = key.partition(":")
    if kind == "baseline":
        return label
    m = other_model(key)
    what = style.model_name(m.model_type) if m is not None else "model"
    if key == model_key:
        return f"{what} (loaded)"
    if kind == "bundled":
        return f"{what} (bundled {rest})"
    uploaded = ss.get("model_upload_names", {}).get(key)
    return f"{what} (uploaded {uploaded})" if uploaded else f"{what} (trained {rest})"


CMP_KEYS = ("compose_models", "compose_cmp_map")
common.restore_widgets(*CMP_KEYS)


def comparison_section() -> None:
    """Several models' predictions of this target, side by side: a table, the change per gene, the map."""
    st.subheader("Compare models on this target")
    options = model_options()
    if "compose_models" not in ss:
        ss.compose_models = [model_key]
    ss.compose_models = [k for k in ss.compose_models if k in options]
    chosen = st.multiselect(
        "Models to compare", list(options), format_func=lambda k: options.get(k, k), key="compose_models",
        help="The same target, predicted from the same source cells by each model. The baselines are fitted on the "
        "cells the loaded model was trained on. Train or upload more models on the Model page.")
    common.remember_widgets("compose_models")
    if len(chosen) < 2:
        st.caption("Choose two or more models (for instance the loaded one and the additive baseline) to see their "
                   "predictions of this target side by side.")
        return

    names = {}
    for k in chosen:
        n = short_name(k, options[k])
        names[k] = n if n not in names.values() else f"{n} [{k}]"
    predictors, done = {}, {}
    for k in chosen:
        kind, _, rest = k.partition(":")
        try:
            predictors[names[k]] = (fitted_baseline(rest, ds.key, model_key, model, ds.adata) if kind == "baseline"
                                    else other_model(k))
        except PDAEError as e:
            st.caption(f"{names[k]} could not be fitted: {e}")
            continue
        if k == model_key:
            done[names[k]] = result.predicted  # the prediction shown above
        elif k == "baseline:additive" and result.additive is not None:
            done[names[k]] = result.additive
    predictors = {n: p for n, p in predictors.items() if p is not None}
    cmp_key = (ds.key, reg.perturbation_key, reg.control_label, model_key, tuple(chosen),
               tuple(sorted(weights.items())), src, n_src)
    if ss.get("_compose_cmp", (None,))[0] != cmp_key:
        with st.spinner("Predicting with each model…"):
            ss._compose_cmp = (cmp_key, compare.compare_what_if(predictors, result, ds.adata, weights, reg,
                                                                n_cells=n_src, precomputed=done))
    comparison = ss._compose_cmp[1]
    fixed = {names[k]: style.KIND_COLORS[kind] for k, kind in ((model_key, style.PREDICTED),
                                                                 ("baseline:additive", style.ADDITIVE)) if k in names}
    colors = pcmp.colors_for(list(names.values()), fixed)  # the loaded model red, the additive orange, as above
    (st.success if comparison.closest() is not None else st.info)(comparison.summary())
    cmp_table = comparison.table().rename(columns=compare.COMPARISON_LABELS)
    st.dataframe(cmp_table.style.format(precision=3, na_rep="–"), hide_index=True, width="stretch",
                 key="compose_cmp_table")
    if comparison.measured:
        st.caption(f"Energy distance: how far the predicted cells are from the measured cells as populations (up to "
                   f"{comparison.max_cells} cells of each; 0 = indistinguishable). Correlation: how well the change "
                   "from control, gene by gene, follows the measured change. A model that saw this target in training "
                   "is not being tested on it.")
    deltas = comparison.deltas()
    if deltas:
        if comparison.measured:
            st.plotly_chart(pcmp.change_panels(deltas, comparison.observed_delta, comparison.genes,
                                               comparison.correlations(), colors=colors,
                                               title=f"{result.target}: predicted against observed change per gene, "
                                               "per model"),
                            width="stretch", config=common.PLOT_CONFIG, theme=None, key="compose_cmp_scatter")
        st.plotly_chart(pcmp.change_bars(deltas, comparison.genes, comparison.observed_delta, n=15, colors=colors),
                        width="stretch", config=common.PLOT_CONFIG, theme=None, key="compose_cmp_bars")
        drawn = [p for p in comparison.predictions if p.ok]
        if ss.get("compose_cmp_map") not in [p.name for p in drawn]:
            others = [p.name for p in drawn if p.name != names.get(model_key)]  # the loaded one is drawn above
            ss.compose_cmp_map = others[0] if others else drawn[0].name
        shown_name = st.selectbox("Cells shown in the map", [p.name for p in drawn], key="compose_cmp_map",
                                  help="The predicted cells of one model, on the same map as above.")
        common.remember_widgets("compose_cmp_map")
        pick = next(p for p in drawn if p.name == shown_name)
        one = replace(result, predicted=pick.cells, additive=None)
        coords, groups, hover = explore.what_if_embedding(ref, one)
        by = "" if colour_gene is None else f", coloured by {colour_gene}"
        title = f"{result.target}: predicted cells of {shown_name}{by}, on the same map"
        if colour_gene is None:
            groups = [shown_name if g == style.PREDICTED else g for g in groups]
        st.plotly_chart(
            cell_map(ref, one, coords, groups, hover, colour_gene, title,
                     colors={style.OTHER_CELLS: style.OTHER_CELLS_COLOR, shown_name: colors[shown_name]},
                     order=(style.OTHER_CELLS, style.CONTROL, style.OBSERVED, shown_name)),
            width="stretch", config=common.PLOT_CONFIG, theme=None, key="compose_cmp_umap")


comparison_section()
