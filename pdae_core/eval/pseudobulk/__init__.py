"""Mean-level ("pseudobulk") benchmark track: predict the mean change from control of
unseen doubles from one profile per condition.

Input is any AnnData of per-condition profiles (one row per condition, doubles named
``A+B``), either as changes from control (no control row needed; the built-in
``norman19_pseudobulk``) or as raw means plus a control row (subtracted here); see
:func:`profiles_from_anndata`. The doubles whose two singles are both measured are
split into ``k`` folds (:func:`double_folds`); each fold is predicted by models
fitted to every other profile (all singles and the other folds' doubles):

* :class:`AdditiveProfile`: ``delta(A+B) = delta(A) + delta(B)``;
* :class:`LinearProfile`: ridge regression of the deltas on the label vectors;
* :class:`PDAEProfile`: the PDAE in its deterministic mean form (noise dimension 0,
  one row per condition, additive shifts ``W l`` in a learned latent space).

:func:`run_pseudobulk_benchmark` scores every held-out double (Pearson delta over all
genes and over its top DE genes, R2 delta, L2 distance), :func:`summarise_pseudobulk`
averages per model and :func:`pseudobulk_markdown` writes the table.

Modules: :mod:`.profiles` (data and folds), :mod:`.models` (profile models),
:mod:`.track` (the benchmark and its tables).
"""

from __future__ import annotations

from .models import PROFILE_MODELS, AdditiveProfile, LinearProfile, PDAEProfile, ProfileModel
from .profiles import ProfileSet, double_folds, profiles_from_anndata
from .track import paired_differences, pseudobulk_markdown, run_pseudobulk_benchmark, summarise_pseudobulk

__all__ = [
    "ProfileSet",
    "profiles_from_anndata",
    "double_folds",
    "ProfileModel",
    "AdditiveProfile",
    "LinearProfile",
    "PDAEProfile",
    "PROFILE_MODELS",
    "run_pseudobulk_benchmark",
    "summarise_pseudobulk",
    "paired_differences",
    "pseudobulk_markdown",
]
