"""Embeddings: how the model describes each cell (its latent space) and each perturbation (the
perturbation embedding, the columns of W), in plain words; the technical names in help texts."""

from __future__ import annotations

import streamlit as st

from pages import common
from pdae_core import explore
from pdae_core.data.registry import condition_column
from pdae_core.plot import cells as cf

#: Colour choices of the cell map (the condition one only for few conditions, the covariate one
#: when the data set names one).
KIND, TARGET, GENE, CONDITION = "single / double / control", "one target", "a gene's expression", "condition"
MAX_CONDITION_COLOURS = 12
PLOT = {"width": "stretch", "config": common.PLOT_CONFIG, "theme": None}

common.init_state()
ss = st.session_state
st.title("Embeddings")
st.caption("How the model sees the cells and the perturbations: cells or perturbations it finds alike lie close "
           "together.")
with st.expander("How to read this page"):
    st.markdown(
        "- **The cell map**: each dot is one cell of the dataset. The model describes every cell by a short list "
        "of numbers (its *latent space*); the map flattens them to two dimensions (UMAP), so cells the model "
        "finds alike lie close together. The axes have no unit: only distances and groups matter.\n"
        "- **With or without the perturbation's effect**: *removed* shows each cell as the model thinks it was "
        "before its perturbation; if the model has learnt the perturbations well, cells of every condition "
        "mix there. *As measured* adds each perturbation's effect back, and the conditions separate.\n"
        "- **Colour**: single perturbations, doubles (two targets together) and control cells; or one target "
        "(its cells and the doubles containing it in colour, the rest grey); or one gene's expression.\n"
        "- **How the model represents each perturbation**: the model learns one direction per target, the "
        "change it makes to a cell's description. Targets close together on the map, or red in the "
        "similarity chart, have effects the model finds alike."
    )
ds = common.current_dataset()
model_key, model = common.require_model()
reg = model.registry
why = None if ds is None or ds.registry is None else common.compatibility(model, ds)
WIDGETS = ("emb_which", "emb_colour", "emb_target", "emb_gene")


def _choice(key: str, options: list[str], default: str) -> None:
    """Reset a remembered choice that is no longer offered (other dataset or model)."""
    if ss.get(key) not in options:
        ss[key] = default


def latent_section() -> None:
    assert ds is not None and ds.registry is not None
    common.restore_widgets(*WIDGETS)
    st.subheader("How the model sees each cell")
    conds = condition_column(ds.adata, reg.perturbation_key)
    unique = sorted(set(conds))
    targets = sorted({p for c in unique for p in reg.parse(c)})
    colour_opts = [KIND] + ([TARGET] if targets else []) + [GENE]
    if len(unique) <= MAX_CONDITION_COLOURS:
        colour_opts.append(CONDITION)
    if ds.registry.covariate_key:
        colour_opts.append(ds.registry.covariate_key)
    kinds = ["z_base", "z"] if model.additive_latent else ["z_base"]
    _choice("emb_which", kinds, "z_base")
    _choice("emb_colour", colour_opts, KIND)
    c1, c2 = st.columns(2)
    which = c1.radio(
        "Show each cell", kinds, horizontal=True, key="emb_which",
        format_func=lambda w: {"z_base": "with its perturbation's effect removed",
                               "z": "as measured (with the effect)"}[w],
        help="Technical names: *z_base*, the model's latent code of the cell with its perturbation's shift "
             "removed; *z = z_base + W l*, with the shift of its own perturbation l added back. If the model "
             "explains the perturbations by their shifts, conditions mix in z_base and separate in z.",
    )
    colour = c2.radio("Colour by", colour_opts, horizontal=True, key="emb_colour")
    held = [h for h in model.holdout if h in set(unique)]
    what = "its perturbation's effect removed" if which == "z_base" else "as measured"
    title = f"Each cell as the model describes it, {what} ({ds.adata.n_obs:,} cells)"
    coords = common.latent_umap(ds.key, model_key, which, model, ds.adata)
    fig = None
    if colour == TARGET:
        first = reg.parse(held[0])[0] if held and reg.parse(held[0]) else targets[0]
        _choice("emb_target", targets, first if first in targets else targets[0])
        target = st.selectbox("Target", targets, key="emb_target",
                              help="Its cells alone and every double containing it in colour; control cells in "
                                   "grey, all other cells light grey.")
        fig = cf.latent_scatter(coords, conds, reg, colour_by="target", target=target, held_out=held,
                                title=f"{title}: {target} highlighted")
    elif colour == GENE:
        default = next((t for t in targets if t in set(reg.gene_names)), reg.gene_names[0])
        if not str(ss.get("emb_gene") or "").strip():
            ss.emb_gene = default
        query = st.text_input("Gene", key="emb_gene", placeholder="e.g. " + default,
                              help="Type a gene name (upper or lower case); only the genes the model was "
                                   f"trained on ({reg.n_genes:,}) can be shown.")
        gene, hint = explore.find_gene(reg, query)
        if gene is None:
            st.warning(hint + " The map below shows singles, doubles and control until a modelled gene is chosen.")
        else:
            j = reg.gene_names.index(gene)
            values = reg.expression(ds.adata[:, [j]])[:, 0]
            hover = [f"{c} (held out)" if c in set(held) else c for c in conds]
            fig = cf.expression_scatter(coords, values, hover, gene=gene, title=f"{title}: {gene} expression")
    elif colour == CONDITION:
        fig = cf.latent_scatter(coords, conds, reg, colour_by="condition", held_out=held, title=title)
    elif colour == ds.registry.covariate_key:
        fig = cf.latent_scatter(coords, conds, reg, colour_by="covariate", held_out=held, title=title,
                                covariate=ds.adata.obs[colour].astype(str).tolist())
    if fig is None:
        fig = cf.latent_scatter(coords, conds, reg, colour_by="kind", held_out=held, title=title)
    common.remember_widgets(*WIDGETS)
    st.plotly_chart(fig, key="emb_umap", **PLOT)
    if held:
        st.caption(f"Held out from training (hover shows “held out”): {', '.join(held)}.")


if ds is None or ds.registry is None:
    st.info("Load a dataset on the Data page to see the cells as the model describes them; "
            "how the model represents each perturbation (below) needs only the model.")
elif why:
    st.warning(f"The loaded model does not fit {ds.label}: {why}")
else:
    latent_section()

st.subheader("How the model represents each perturbation")
st.caption("The model learns one direction per target: how that perturbation moves a cell. Targets with similar "
           "effects get similar directions.")
W = model.perturbation_embedding()
seen = W.index.isin(model.seen_perturbations)
if not seen.all():
    st.caption("Targets never seen in training keep the model's starting guess and are left out: "
               + ", ".join(W.index[~seen]))
W = W[seen]
xy, ratio = explore.perturbation_projection(W)
with st.expander("Technical detail"):
    st.markdown(
        f"The directions are the columns of **W**, the perturbation embedding ({W.shape[0]} targets x "
        f"{W.shape[1]} latent dimensions): a cell's latent code is *z = z_base + W l*, with *l* its perturbation "
        "label (the dose of each target). The map is a principal component analysis of the columns "
        f"(PC1 explains {ratio[0]:.0%} of their variance, PC2 {ratio[1]:.0%}); the similarity is the cosine of "
        "the angle between two columns, rows and columns ordered by hierarchical clustering; the last chart "
        "shows each column's values."
    )
st.plotly_chart(
    cf.perturbation_map(xy, list(W.index), title="Map of the perturbations: similar effects lie close together"),
    key="emb_pmap", **PLOT,
)
st.plotly_chart(
    cf.similarity_heatmap(explore.shift_similarity(W),
                          title="How alike two perturbations' effects are (1 same, 0 unrelated, −1 opposite)"),
    key="emb_sim", **PLOT,
)
st.plotly_chart(
    cf.latent_heatmap(W, title=f"Which of the model's {W.shape[1]} internal dimensions each perturbation moves"),
    key="emb_heat", **PLOT,
)
