"""Embeddings: the learned latent space and the perturbation embedding (columns of W)."""

from __future__ import annotations

import streamlit as st

from pages import common
from pdae_core import explore
from pdae_core.data.registry import condition_column
from pdae_core.plot import cells as cf

common.init_state()
ss = st.session_state
st.title("Embeddings")
ds = common.current_dataset()
model_key, model = common.require_model()
reg = model.registry
why = None if ds is None or ds.registry is None else common.compatibility(model, ds)


def latent_section() -> None:
    assert ds is not None and ds.registry is not None
    common.restore_widgets("emb_which", "emb_colour")
    st.subheader("Latent space of the cells")
    c1, c2 = st.columns(2)
    kinds = ["z_base", "z"] if model.additive_latent else ["z_base"]
    if ss.get("emb_which") not in kinds:
        ss.pop("emb_which", None)
    which = c1.radio(
        "Embedding", kinds, horizontal=True, key="emb_which",
        format_func=lambda w: {"z_base": "z_base (perturbation removed)", "z": "z = z_base + W l (as observed)"}[w],
        help="z_base should mix conditions if the model explains them by its shifts; z should separate them.",
    )
    colour_opts = ["condition", "kind (control / single / combination)"]
    if ds.registry is not None and ds.registry.covariate_key:
        colour_opts.append(f"covariate ({ds.registry.covariate_key})")
    if ss.get("emb_colour") not in colour_opts:
        ss.pop("emb_colour", None)
    colour = c2.radio("Colour by", colour_opts, horizontal=True, key="emb_colour")
    common.remember_widgets("emb_which", "emb_colour")

    coords = common.latent_umap(ds.key, model_key, which, model, ds.adata)
    conds = condition_column(ds.adata, reg.perturbation_key)
    by = "condition" if colour == "condition" else "kind" if colour.startswith("kind") else "covariate"
    covariate = ds.adata.obs[ds.registry.covariate_key].astype(str).tolist() if by == "covariate" else None
    st.plotly_chart(
        cf.latent_scatter(coords, conds, reg, colour_by=by, covariate=covariate, held_out=model.holdout,
                          title=f"UMAP of {which} ({ds.adata.n_obs:,} cells)"),
        width="stretch", config=common.PLOT_CONFIG, theme=None, key="emb_umap",
    )


if ds is None or ds.registry is None:
    st.info("Load a dataset on the Data page to see the cells' latent space; "
            "the perturbation embedding below needs only the model.")
elif why:
    st.warning(f"The loaded model does not fit {ds.label}: {why}")
else:
    latent_section()

st.subheader("Perturbation embedding (columns of W)")
W = model.perturbation_embedding()
seen = W.index.isin(model.seen_perturbations)
if not seen.all():
    st.caption("Perturbations never seen in training keep their initial shift and are left out: "
               + ", ".join(W.index[~seen]))
W = W[seen]
xy, ratio = explore.perturbation_projection(W)
p1, p2 = st.columns(2)
with p1:
    st.plotly_chart(
        cf.perturbation_map(xy, list(W.index), title=f"PCA of the shifts (PC1 {ratio[0]:.0%}, PC2 {ratio[1]:.0%})"),
        width="stretch", config=common.PLOT_CONFIG, theme=None, key="emb_pmap",
    )
with p2:
    st.plotly_chart(
        cf.similarity_heatmap(explore.shift_similarity(W), title="cosine similarity of shifts (clustered)"),
        width="stretch", config=common.PLOT_CONFIG, theme=None, key="emb_sim",
    )
st.plotly_chart(cf.latent_heatmap(W, title="which latent dimensions each perturbation uses"),
                width="stretch", config=common.PLOT_CONFIG, theme=None, key="emb_heat")
