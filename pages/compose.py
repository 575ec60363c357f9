"""Compose (what-if): combine seen perturbations in latent space and compare the
predicted cells with control, the observed cells (when measured) and the additive
gene-space baseline."""

from __future__ import annotations

import streamlit as st

from pages import common
from pdae_core import explore
from pdae_core.errors import PDAEError
from pdae_core.plot import cells as cf
from pdae_core.plot import style

common.init_state()
ss = st.session_state
st.title("Compose a what-if combination")
ds = common.require_dataset()
model_key, model = common.require_model(ds)
reg = model.registry
st.caption(
    "Each perturbation is a shift in the model's latent space; a combination adds the shifts (weighted by dose). "
    "Source cells are encoded, moved and decoded into predicted cells."
)

seen = model.seen_perturbations
summary = explore.summarize_dataset(ds.adata, reg)
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


KEYS = ("compose_perts", "compose_source", "compose_n", "compose_show_add", "compose_genes", "compose_genes_target")
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
                              additive=additive, n_cells=n_src)
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
        st.markdown(
            "| | magnitude | non-additivity |\n|---|---|---|\n"
            f"| **predicted** | {pm('magnitude')} | {pm('normalised_residual')} |\n{observed}",
            help="Magnitude: √(c1² + c2²) of the fit c1·A + c2·B; above 1 synergy, below 1 buffering (Norman et al. "
            "2019); a pair exactly the sum of its parts has √2 ≈ 1.41. Non-additivity: ‖AB − A − B‖ / ‖A + B‖, "
            "0 = exactly the sum of its parts.",
        )
        if obs is not None:
            st.markdown(f"Observed in {ds.label}: {res.observed_description}")
        sure = (f"{res.agreement}; ± is the spread across the networks." if res.agreement else
                "One network: no uncertainty (train an ensemble, `pdae train --ensemble 5`, for a spread).")
        st.caption(f"{sure} {res.n_source_cells} cells moved from control, {res.n_genes} genes ({res.genes}), least squares "
                   f"on mean changes; model fit {pred['model_fit']:.2f}.")
        st.page_link("pages/interactions.py", label="Every pair on the Interactions page", icon=":material/grid_on:")


with right:
    verdict = explore.verdict_in_words(result.check, weights, explore.measured_alone(model),
                                       held_out=result.target in model.holdout)
    show_verdict = {"info": st.info, "success": st.success, "warning": st.warning, "error": st.error}[verdict.level]
    show_verdict(verdict.markdown(result.target))
    with st.expander("Technical detail: why the model can (or cannot) predict this"):
        for line in verdict.details:
            st.caption(line)
    pair = explore.composed_pair(model, weights)
    if pair is not None:
        interaction_box(*pair)
    obs_n = 0 if result.observed is None else result.observed.n_obs
    st.caption(
        f"{result.predicted.n_obs} predicted cells from {src} · "
        + (f"{obs_n} observed cells of {result.target}" if obs_n else f"{result.target} was not measured in this dataset")
        + (f" · additive baseline unavailable: {result.additive_note}" if result.additive_note else "")
    )
    ref = common.reference_embedding(ds.key, reg.perturbation_key, ds.adata)
    umap_title = f"{result.target}: cells in one shared UMAP (gene space)"
    try:
        coords, groups, hover = explore.what_if_embedding(ref, result, include_additive=show_add)
        umap = cf.what_if_scatter(coords, groups, hover, title=umap_title)
    except (PDAEError, ValueError) as e:  # the toggle is remembered: never let the overlay break the page
        if not show_add:
            raise
        st.caption(f"The additive baseline cells could not be drawn ({e}); the UMAP shows the others.")
        coords, groups, hover = explore.what_if_embedding(ref, result)
        umap = cf.what_if_scatter(coords, groups, hover, title=umap_title)
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
    if genes:
        st.plotly_chart(cf.gene_violins(explore.gene_values(result, genes, reg), genes,
                                        title="expression per group"),
                        width="stretch", config=common.PLOT_CONFIG, theme=None, key="compose_violins")
with g2:
    st.plotly_chart(cf.delta_bars(table, n=15, title="top changed genes (mean vs control)"),
                    width="stretch", config=common.PLOT_CONFIG, theme=None, key="compose_bars")

st.subheader("Top changed genes")
show = table.head(50).rename(columns=style.GENE_TABLE_LABELS)
st.dataframe(show.style.format(precision=3, na_rep="–"), hide_index=True, width="stretch", height=320)
d1, d2 = st.columns(2)
slug = result.target.replace("+", "_").replace(":", "-")
d1.download_button("Download predicted cells (.h5ad)", common.h5ad_bytes(result.predicted),
                   file_name=f"predicted_{slug}.h5ad", mime="application/octet-stream", key="dl_h5ad")
d2.download_button("Download gene table (.csv)", table.to_csv(index=False).encode(),
                   file_name=f"top_genes_{slug}.csv", mime="text/csv", key="dl_csv")
