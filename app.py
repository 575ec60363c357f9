"""PDAE explorer: a Streamlit dashboard over pdae_core.

    streamlit run app.py

Opens on the bundled demo (the real Norman 2019 slice and the PDAE checkpoint in
checkpoints/norman19_devel). Pages: Data, Model, Compose (what-if), Interactions,
Embeddings, Benchmark, Glossary. The science lives in pdae_core; pages only call it.
"""

from __future__ import annotations

import logging

import streamlit as st

st.set_page_config(page_title="PDAE explorer", page_icon=":material/hub:", layout="wide")

from pages import common  # noqa: E402  (after set_page_config)

common.freeze_imported()
common.init_state()

PAGES = [
    st.Page("pages/data.py", title="Data", icon=":material/dataset:", default=True),
    st.Page("pages/model.py", title="Model", icon=":material/model_training:"),
    st.Page("pages/compose.py", title="Compose (what-if)", icon=":material/science:"),
    st.Page("pages/interactions.py", title="Interactions", icon=":material/grid_on:"),
    st.Page("pages/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
    st.Page("pages/benchmark.py", title="Benchmark", icon=":material/leaderboard:"),
    st.Page("pages/glossary.py", title="Glossary", icon=":material/menu_book:"),
]
nav = st.navigation(PAGES)
status = st.sidebar.container()  # below the page links
try:
    nav.run()
except Exception as e:  # noqa: BLE001  (never a traceback on the page; Streamlit's stop/rerun are not Exceptions)
    logging.getLogger("pdae_app").exception("page failed")
    st.error(
        f"This page hit an unexpected error ({type(e).__name__}: {e}). Nothing you loaded or trained was lost; "
        "change the input or go to another page. The full traceback is in the server log."
    )
finally:  # after the page, so it shows what the page just chose (also when the page stopped early)
    with status:
        common.sidebar_status()
