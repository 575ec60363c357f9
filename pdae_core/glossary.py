"""The words of the dashboard and the docs, explained for biologists.

:data:`GLOSSARY` maps a term to a short explanation in plain words (markdown). The dashboard's
Glossary page shows it; other pages link to it. Kept in the library so the command line, the
docs and notebooks can use the same definitions.
"""

from __future__ import annotations

__all__ = ["GLOSSARY", "lookup"]

GLOSSARY: dict[str, str] = {
    "perturbation": (
        "What was done to the cells: a gene knocked down, knocked out or switched on (CRISPRi, CRISPR knockout, "
        "CRISPRa), or a drug. A **combination** such as `KLF1+MAP2K6` is two perturbations in the same cells."
    ),
    "control cells": (
        "Cells that received no perturbation (for CRISPR screens: a non-targeting guide). Every change is "
        "measured against them."
    ),
    "prediction": (
        "Cells the model makes up for a perturbation: measured control cells are moved, one by one, to where "
        "the model expects them under the perturbation. The result is a population of cells, not one average "
        "profile, so its spread and subpopulations can be compared with real cells."
    ),
    "held out": (
        "A perturbation or combination kept away from the model during training. Its measured cells are then a "
        "fair test: the model has to predict them without having seen them."
    ),
    "additive baseline": (
        "The simplest guess for a combination: add the two single perturbations' changes in expression. A "
        "model is only useful for a combination where it does better than this."
    ),
    "scaled additive baseline": (
        "The additive baseline multiplied by one factor fitted on the measured combinations of the training "
        "data. In many screens double perturbations change genes less than the sum of their parts, and this "
        "factor captures that."
    ),
    "no change": "A baseline that predicts the control cells unchanged: what any prediction must beat.",
    "energy distance": (
        "How different two populations of cells are, taking the whole distribution into account (not only the "
        "mean). 0 means the two populations look the same; lower is better when a prediction is compared with "
        "measured cells."
    ),
    "noise floor": (
        "The energy distance between two random halves of the same measured cells. No prediction can be expected "
        "to come closer than this; a model at the noise floor is as good as a repeat of the experiment."
    ),
    "interaction": (
        "How a combination differs from the sum of its parts. **Synergy**: the double changes genes more than "
        "the sum of the singles. **Buffering**: less. **Magnitude** (Norman et al. 2019): about 1.41 for an "
        "exactly additive pair, above for synergy, below for buffering. **Non-additivity**: the part of the "
        "double's change that the sum of the singles does not explain, relative to that sum (0 = additive)."
    ),
    "departure from the sum": (
        "For one gene and one pair: its change with the pair minus the sum of its changes with each part alone. "
        "Zero where the pair is exactly the sum of its parts; the genes with the largest departure are where the "
        "interaction happens (a gene buffered, amplified, reversed, or changed only by the pair)."
    ),
    "uncertainty (spread)": (
        "A model trained several times with different random starts (an ensemble) gives several answers; their "
        "spread says how sure the model is. A large spread means: test it before trusting it. A small one is no "
        "promise: networks can agree and all be wrong, so the spread is not a likely range. Likely ranges come "
        "from a calibrated ensemble, whose networks were each checked on measured combinations they never saw."
    ),
    "extrapolation": (
        "A prediction for something the model cannot build from what it saw: a perturbation that was never "
        "measured alone, or a dose beyond the doses measured. Such predictions are flagged and deserve caution."
    ),
    "dose": (
        "How strongly a perturbation is applied, relative to the measured one: 1 is as measured, 0 is none, 2 "
        "is twice the measured effect in the model's space. For CRISPRa (switching a gene on) and CRISPRi "
        "(switching it down) the dose is not a guide count: doses other than 1 are the model's extrapolation "
        "along the perturbation's direction."
    ),
    "latent space": (
        "The model's internal summary of a cell's state: a few dozen numbers per cell instead of thousands of "
        "genes. Each perturbation is a shift in this space; a combination adds the shifts."
    ),
    "UMAP": (
        "A picture that places cells with similar expression close together. Distances between far-apart groups "
        "are not meaningful; use it to see whether predicted cells land among the measured ones."
    ),
    "expression": "Gene expression as log(1 + normalised counts), unless the data page says otherwise.",
    "change (Δ)": "The mean expression of a gene under the perturbation minus its mean in control cells.",
}


def lookup(term: str) -> str:
    """The explanation of ``term`` (case-insensitive); a KeyError names the known terms."""
    for k, v in GLOSSARY.items():
        if k.lower() == term.lower():
            return v
    raise KeyError(f"{term!r} is not in the glossary; terms: {', '.join(GLOSSARY)}")
