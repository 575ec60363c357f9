"""Glossary: the words of the dashboard in plain language."""

from __future__ import annotations

import streamlit as st

from pages import common
from pdae_core.glossary import GLOSSARY

common.init_state()
st.title("Glossary")
st.caption("What the words on these pages mean. Type in the box to filter.")
query = st.text_input("Find a word", key="glossary_query", placeholder="e.g. noise floor").strip().lower()
shown = {k: v for k, v in GLOSSARY.items() if not query or query in k.lower() or query in v.lower()}
if not shown:
    st.info(f"No entry mentions “{query}”.")
for term, text in shown.items():
    st.markdown(f"**{term[0].upper()}{term[1:]}**  \n{text}")
