"""Figures: one style module (names, colours, template) and pure plotly figure builders."""
