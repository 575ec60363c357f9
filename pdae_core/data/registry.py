"""Data setup: which column holds the perturbation, which label is control, the
vocabulary of elementary perturbations, gene names, and the label matrix.

A condition is a string: the control label, an elementary perturbation (``"KLF1"``)
or a combination of them joined by the separator (``"KLF1+MAP2K6"``). Its label
vector is multi-hot over the vocabulary (control = zero vector); an optional dose
column turns the ones into real values.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError
from .columns import detect_control
from .preview import preview

#: A target for prediction: a condition name, {perturbation: dose}, a list of
#: perturbation names or (name, dose) pairs, or a raw label vector.
Target = Union[str, Mapping[str, float], Sequence[Union[str, tuple[str, float]]], np.ndarray]  # noqa: UP007


@dataclass
class PerturbationRegistry:
    """Everything a model needs to know about how a dataset encodes perturbations."""

    perturbation_key: str
    control_label: str
    perturbations: list[str]
    gene_names: list[str]
    separator: str = "+"
    dose_key: str | None = None
    covariate_key: str | None = None
    layer: str | None = None
    x_kind: str = "log1p"  # "log1p" | "counts" | "change" (changes from control, profile models only)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    #: perturbation names that contain the separator but are one perturbation (e.g. "IFNB+TNF" given
    #: as one treatment); a condition joins them with others as usual ("IFNB+TNF+KLF1")
    atomic_labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.separator, str) or not self.separator:
            raise DataError(
                f"The combination separator must be a non-empty string (e.g. '+'), got {self.separator!r}."
            )
        if self.x_kind not in ("log1p", "counts", "change"):
            raise DataError(f"Registry field 'x_kind' must be 'log1p', 'counts' or 'change', got {self.x_kind!r}.")
        if not isinstance(self.preprocessing, dict):
            raise DataError(f"Registry field 'preprocessing' must be a dict, got {self.preprocessing!r:.80}.")
        if not isinstance(self.atomic_labels, list) or not all(isinstance(a, str) and a.strip()
                                                                for a in self.atomic_labels):
            raise DataError("Registry field 'atomic_labels' must be a list of non-empty strings.")
        self.atomic_labels = [a.strip() for a in self.atomic_labels]

    # ---- conditions and labels -------------------------------------------------
    @property
    def n_perturbations(self) -> int:
        return len(self.perturbations)

    @property
    def n_genes(self) -> int:
        return len(self.gene_names)

    def _index(self) -> dict[str, int]:
        idx = self.__dict__.get("_idx_cache")
        if idx is None or len(idx) != len(self.perturbations):
            idx = {p: i for i, p in enumerate(self.perturbations)}
            self.__dict__["_idx_cache"] = idx
        return idx

    def parse(self, condition: str) -> list[str]:
        """Elementary perturbations of a condition name (``[]`` for control)."""
        condition = str(condition).strip()
        if condition == self.control_label:
            return []
        atomic = set(self.atomic_labels)
        if condition in atomic:
            return [condition]
        parts = [p.strip() for p in condition.split(self.separator)]
        if atomic:  # re-join the pieces of a name that contains the separator (longest first)
            merged, i = [], 0
            while i < len(parts):
                j = next((j for j in range(len(parts), i + 1, -1) if self.separator.join(parts[i:j]) in atomic), i + 1)
                merged.append(self.separator.join(parts[i:j]))
                i = j
            parts = merged
        if any(p == "" for p in parts):
            raise DataError(
                f"Condition {condition!r} has an empty part: combinations are written "
                f"'A{self.separator}B' with separator {self.separator!r}."
            )
        return [p for p in parts if p != self.control_label]

    def is_control(self, condition: str) -> bool:
        return len(self.parse(condition)) == 0

    def _target_error(self, what: str | None) -> DataError:
        ctrl = f"pass the control label {self.control_label!r} as a string"
        if what is None:
            return DataError(f"The prediction target is empty: name at least one perturbation; to predict control cells explicitly, {ctrl}.")
        return DataError(
            f"{what}. A prediction target is a condition name (str, e.g. 'A{self.separator}B'), a {{name: dose}} "
            f"dict, a list of names or (name, dose) pairs, or a label vector of {self.n_perturbations} numbers; for control {ctrl}."
        )

    def label_vector(self, target: Target) -> np.ndarray:
        """Label vector (float32, length = vocabulary size) of a prediction target.

        An empty target (``""``, ``[]``, ``{}``, an empty array) is an error: control is
        asked for explicitly with the control label (or a zero vector of full length)."""
        K = self.n_perturbations
        if isinstance(target, (bytes, bytearray, memoryview)) or not isinstance(
            target, (str, Mapping, Sequence, np.ndarray)
        ):
            raise self._target_error(f"Cannot interpret a prediction target of type {type(target).__name__}")
        if (isinstance(target, str) and not target.strip()) or len(target) == 0 or (
            isinstance(target, np.ndarray) and target.size == 0
        ):
            raise self._target_error(None)
        if isinstance(target, np.ndarray) and not np.issubdtype(target.dtype, np.number):
            target = target.tolist()  # an array of names (or of (name, dose) pairs), not a raw vector
        if isinstance(target, np.ndarray) or (
            isinstance(target, Sequence) and not isinstance(target, str) and len(target) > 0
            and all(isinstance(v, (int, float, np.number)) for v in target)
        ):
            vec = np.asarray(target, dtype=np.float32).reshape(-1)
            if vec.shape[0] != K:
                raise DataError(f"A raw label vector must have length {K} (the vocabulary size), got {vec.shape[0]}.")
            if not np.all(np.isfinite(vec)):
                raise DataError("The label vector contains NaN or infinite values.")
            return vec
        weights: dict[str, float] = {}
        if isinstance(target, str):
            known = self._index()
            for p in self.parse(target):
                name, dose = p, 1.0
                if p not in known and ":" in p:  # "A:0.5" (as written by condition_name)
                    head, _, tail = p.rpartition(":")
                    try:
                        name, dose = head, float(tail)
                    except ValueError:
                        pass
                weights[name] = weights.get(name, 0.0) + dose
        elif isinstance(target, Mapping):
            for k, v in target.items():
                weights[str(k)] = self._dose(k, v)
        else:
            for item in target:
                if isinstance(item, str):
                    name, dose = item, 1.0
                else:
                    try:
                        name, dose = item
                    except (TypeError, ValueError):
                        raise self._target_error(
                            f"Target item {item!r} is neither a perturbation name nor a (name, dose) pair"
                        ) from None
                weights[str(name)] = weights.get(str(name), 0.0) + self._dose(name, dose)
        vec = np.zeros(K, dtype=np.float32)
        idx = self._index()
        for name, dose in weights.items():
            if name == self.control_label:
                continue
            if name not in idx:
                raise DataError(
                    f"Unknown perturbation {name!r}: the model knows {K} elementary perturbations "
                    f"({preview(self.perturbations)})."
                )
            if not math.isfinite(dose):
                raise DataError(f"Dose of {name!r} is not finite ({dose}).")
            vec[idx[name]] = dose
        return vec

    def _dose(self, name: Any, dose: Any) -> float:
        try:
            if not isinstance(dose, (bool, str, bytes)):
                return float(dose)
        except (TypeError, ValueError):
            pass
        raise self._target_error(f"Dose {dose!r} of {name!r} is not a number")

    def label_matrix(self, adata: ad.AnnData) -> np.ndarray:
        """(n_cells, n_perturbations) float32 label matrix of an AnnData set up with this registry."""
        conds = condition_column(adata, self.perturbation_key)
        doses = None
        if self.dose_key is not None:
            if self.dose_key not in adata.obs.columns:
                raise DataError(f"Dose column {self.dose_key!r} is not in obs (columns: {preview(list(adata.obs.columns))}).")
            doses = adata.obs[self.dose_key].to_numpy()
        cache: dict[tuple[str, Any], np.ndarray] = {}
        out = np.zeros((adata.n_obs, self.n_perturbations), dtype=np.float32)
        idx = self._index()
        for i, cond in enumerate(conds):
            dose = doses[i] if doses is not None else None
            key = (cond, None if dose is None else str(dose))
            row = cache.get(key)
            if row is None:
                row = np.zeros(self.n_perturbations, dtype=np.float32)
                parts = self.parse(cond)
                part_doses = _split_doses(dose, parts, self.separator, cond, self.dose_key)
                for p, d in zip(parts, part_doses):
                    if p not in idx:
                        raise DataError(
                            f"Condition {cond!r} uses perturbation {p!r}, which is not in the model's vocabulary "
                            f"({preview(self.perturbations)})."
                        )
                    row[idx[p]] += d
                cache[key] = row
            out[i] = row
        return out

    def condition_name(self, vec: np.ndarray) -> str:
        """Canonical name of a label vector (``A+B``; doses other than 1 as ``A:0.5``)."""
        parts = []
        for i in np.flatnonzero(np.abs(vec) > 1e-8):
            d = float(vec[i])
            name = self.perturbations[i]
            parts.append(name if abs(d - 1.0) < 1e-8 else f"{name}:{d:g}")
        return self.separator.join(parts) if parts else self.control_label

    # ---- genes -----------------------------------------------------------------
    def check_genes(self, adata: ad.AnnData, what: str = "the dataset") -> None:
        """Raise a DataError unless ``adata.var_names`` equal the registry's genes, in order."""
        genes = list(map(str, adata.var_names))
        if genes == self.gene_names:
            return
        missing = [g for g in self.gene_names if g not in set(genes)]
        extra = [g for g in genes if g not in set(self.gene_names)]
        if not missing and not extra:
            raise DataError(
                f"{what} has the model's {self.n_genes} genes but in a different order; "
                "subset with adata[:, model.registry.gene_names] first."
            )
        raise DataError(
            f"{what} does not match the model's genes: the model expects {self.n_genes} genes, "
            f"{what} has {len(genes)}; {len(missing)} of the model's genes are missing "
            f"({preview(missing)}) and {len(extra)} are extra ({preview(extra)})."
        )

    def model_genes(self, adata: ad.AnnData, what: str = "the dataset") -> ad.AnnData:
        """``adata`` on the registry's genes, in its order: ``adata`` itself when they already are, a
        view when it holds them permuted or among others (e.g. the file a model with a gene cap was
        trained from); otherwise :meth:`check_genes`'s error."""
        genes = list(map(str, adata.var_names))
        if genes == self.gene_names:
            return adata
        have = set(genes)
        if len(have) == len(genes) and all(g in have for g in self.gene_names):
            return adata[:, self.gene_names]
        self.check_genes(adata, what)
        return adata

    def expression(self, adata: ad.AnnData) -> np.ndarray:
        """Dense float32 expression matrix (from ``layer`` if set) of an AnnData."""
        return expression_matrix(adata, self.layer)

    # ---- serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_idx_cache", None)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PerturbationRegistry:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise DataError(f"Unknown registry fields: {sorted(unknown)}.")
        for key in ("perturbation_key", "control_label", "perturbations", "gene_names"):
            if key not in d:
                raise DataError(f"Registry is missing the field {key!r}.")
        for key in ("perturbation_key", "control_label"):
            if not isinstance(d[key], str) or not d[key].strip():
                raise DataError(f"Registry field {key!r} must be a non-empty string, got {d[key]!r:.80}.")
        for key in ("dose_key", "covariate_key", "layer"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise DataError(f"Registry field {key!r} must be a string or null, got {d[key]!r:.80}.")
        for key in ("perturbations", "gene_names"):
            v = d[key]
            if not isinstance(v, list) or not all(isinstance(p, str) and p.strip() for p in v):
                raise DataError(f"Registry field {key!r} must be a list of non-empty strings.")
        reg = cls(**dict(d))
        if len(set(reg.perturbations)) != len(reg.perturbations):
            raise DataError("Registry perturbation vocabulary has duplicates.")
        return reg


# ---------------------------------------------------------------------------------
# helpers


def _split_doses(dose: Any, parts: list[str], sep: str, cond: str, dose_key: str | None) -> list[float]:
    if dose is None:
        return [1.0] * len(parts)
    if isinstance(dose, str) and sep in dose:
        vals = dose.split(sep)
        if len(vals) != len(parts):
            raise DataError(
                f"Dose {dose!r} in column {dose_key!r} has {len(vals)} parts but condition {cond!r} has {len(parts)}."
            )
    else:
        vals = [dose] * len(parts)
    out = []
    for v in vals:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise DataError(f"Dose {v!r} in column {dose_key!r} (condition {cond!r}) is not a number.") from None
        if not math.isfinite(f):
            raise DataError(f"Dose {v!r} in column {dose_key!r} (condition {cond!r}) is not finite.")
        out.append(f)
    return out


def condition_column(adata: ad.AnnData, key: str) -> np.ndarray:
    """The perturbation column as an array of stripped strings, with clear errors."""
    return label_column(adata, key, "Perturbation", "label them (e.g. with the control label) or drop them")


def label_column(adata: ad.AnnData, key: str, what: str, fix: str) -> np.ndarray:
    """An obs column of labels (``what``: "Perturbation", "Context") as stripped strings; a missing
    column or a cell with no value is a DataError naming the column (and ``fix``)."""
    if key not in adata.obs.columns:
        raise DataError(
            f"{what} column {key!r} is not in obs; available columns: {preview(list(adata.obs.columns), 20)}."
        )
    col = adata.obs[key]
    missing = col.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"{what} column {key!r} has {int(missing.sum())} cells with no value "
            f"(first: {list(adata.obs_names[missing][:3])}); {fix}."
        )
    if isinstance(col.dtype, pd.CategoricalDtype):  # strip the few categories, not every cell's value
        cats = np.asarray([str(c).strip() for c in col.cat.categories], dtype=object)
        return cats[col.cat.codes.to_numpy()]
    return col.astype(str).str.strip().to_numpy()


def expression_matrix(adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
    if adata.isbacked:  # X on disk: read these cells (a view reads only its rows)
        adata = adata.to_memory()
    X = adata.layers[layer] if layer is not None else adata.X
    if X is None:
        raise DataError("The AnnData has no expression matrix X.")
    if sp.issparse(X):
        X = X.toarray()
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise DataError(f"Expression matrix has non-numeric dtype {X.dtype}; expected floats or integers.")
    return X.astype(np.float32, copy=False)


#: ``uns['pdae_dataset']['values']`` of an X that holds changes from control (e.g. log-fold-changes of
#: per-condition profiles), not expression
CHANGE_TAGS = ("lfc_vs_control", "change_from_control")


def is_change_table(adata: ad.AnnData, layer: str | None = None) -> bool:
    """Whether X is tagged as changes from control (:data:`CHANGE_TAGS`), as the built-in
    ``norman19_pseudobulk`` is; only the profile model type (``pdae_profile``) takes such data."""
    info = adata.uns.get("pdae_dataset") if hasattr(adata, "uns") else None
    return layer is None and isinstance(info, Mapping) and info.get("values") in CHANGE_TAGS


def detect_x_kind(adata: ad.AnnData, layer: str | None = None, max_cells: int = 2000) -> str:
    """``"counts"`` if the values are non-negative integers, ``"change"`` if X is tagged as
    changes from control (:func:`is_change_table`; negative values allowed), else ``"log1p"``.

    Raises a DataError for non-numeric, NaN/inf or (in expression) negative values (this
    library models raw counts or log-normalised expression, both non-negative).
    """
    where = f"layer {layer!r}" if layer else "X"
    X = adata.layers[layer] if layer is not None else adata.X
    if X is None:
        raise DataError("The AnnData has no expression matrix X.")
    change = is_change_table(adata, layer)
    if adata.isbacked and layer is None:
        X = X[: min(max_cells, adata.n_obs)]  # on disk: look at the first cells only
    data = X.data if sp.issparse(X) else np.asarray(X)
    if not np.issubdtype(np.asarray(data).dtype, np.number) or np.issubdtype(np.asarray(data).dtype, np.complexfloating):
        raise DataError(f"{where} has non-numeric dtype {np.asarray(data).dtype}; expected floats or integers.")
    data = np.asarray(data)
    if data.size == 0:
        raise DataError(f"{where} is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    bad = ~np.isfinite(data)
    if bad.any():
        raise DataError(f"{where} contains {int(bad.sum())} NaN or infinite values; clean or drop those cells first.")
    if change:
        return "change"
    if data.min() < 0:
        raise DataError(
            f"{where} contains negative values (min {float(data.min()):.3g}): expected raw counts or "
            "log-normalised expression (normalize_total + log1p), which are never negative. "
            "If X was scaled (sc.pp.scale), use the unscaled layer (layer=...)."
        )
    sample = data[: max_cells * max(1, adata.n_vars)] if data.ndim == 1 else data[:max_cells]
    # integers: equal to their truncation (finite here); 100x faster than np.mod on float32 (26 ms per
    # million values, paid on every what-if's source cells)
    return "counts" if np.array_equal(sample, np.trunc(sample)) else "log1p"


def setup_anndata(
    adata: ad.AnnData,
    perturbation_key: str = "condition",
    control_label: str | None = None,
    separator: str = "+",
    dose_key: str | None = None,
    covariate_key: str | None = None,
    layer: str | None = None,
    atomic_labels: Sequence[str] = (),
) -> PerturbationRegistry:
    """Validate an AnnData and build its :class:`PerturbationRegistry`.

    The vocabulary is every elementary perturbation that appears in the column
    (alone or in a combination), sorted. Unused categories of a categorical column
    are ignored. ``atomic_labels`` names perturbations that contain the separator but are
    one perturbation (``["IFNB+TNF"]``). Context names (``covariate_key``) are never parsed.
    Raises :class:`DataError` with a specific message on bad input.
    """
    if not isinstance(adata, ad.AnnData):
        raise DataError(f"Expected an AnnData, got {type(adata).__name__}.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise DataError(f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    if not separator:
        raise DataError("The combination separator must be a non-empty string.")
    if layer is not None and layer not in adata.layers:
        raise DataError(f"Layer {layer!r} is not in the AnnData (layers: {list(adata.layers.keys())}).")
    conds = condition_column(adata, perturbation_key)
    if control_label is None:
        control_label = detect_control(conds, perturbation_key)
    elif control_label not in set(conds):
        raise DataError(
            f"Control label {control_label!r} has no cells in column {perturbation_key!r} "
            f"(labels present: {preview(sorted(set(conds)), 12)})."
        )
    if covariate_key is not None and covariate_key not in adata.obs.columns:
        raise DataError(f"Covariate column {covariate_key!r} is not in obs (columns: {preview(list(adata.obs.columns), 20)}).")
    x_kind = detect_x_kind(adata, layer)
    vocab: set[str] = set()
    atomic = [str(a).strip() for a in atomic_labels]
    probe = PerturbationRegistry(perturbation_key, control_label, [], [], separator, atomic_labels=atomic)
    for c in pd.unique(conds):
        vocab.update(probe.parse(c))
    if not vocab:
        raise DataError(f"Column {perturbation_key!r} holds only control cells ({control_label!r}): nothing to model.")
    names = list(map(str, adata.var_names))
    if len(set(names)) != len(names):
        dup = pd.Index(names)[pd.Index(names).duplicated()].unique()
        raise DataError(f"Gene names are not unique ({preview(list(dup))}); call adata.var_names_make_unique().")
    reg = PerturbationRegistry(
        perturbation_key=perturbation_key,
        control_label=control_label,
        perturbations=sorted(vocab),
        gene_names=names,
        separator=separator,
        dose_key=dose_key,
        covariate_key=covariate_key,
        layer=layer,
        x_kind=x_kind,
        preprocessing=dict(adata.uns.get("pdae_preprocessing", {})),
        atomic_labels=atomic,
    )
    if dose_key is not None:
        reg.label_matrix(adata)  # validates the dose column
    return reg


def condition_counts(adata: ad.AnnData, registry: PerturbationRegistry) -> pd.Series:
    """Number of cells per condition (conditions with cells only), largest first."""
    return pd.Series(condition_column(adata, registry.perturbation_key)).value_counts()


def require_conditions(adata: ad.AnnData, registry: PerturbationRegistry, conditions: Sequence[str]) -> None:
    """Raise a DataError naming every requested condition that has zero cells."""
    present = set(condition_column(adata, registry.perturbation_key))
    empty = [c for c in conditions if c not in present]
    if empty:
        raise DataError(
            f"Condition(s) {preview(empty)} have zero cells in column {registry.perturbation_key!r}."
        )


# ---------------------------------------------------------------------------------
# files and preprocessing


def read_h5ad(path: str | os.PathLike, backed: bool = False) -> ad.AnnData:
    """Read an ``.h5ad`` file, turning every failure into a DataError naming the file.
    ``backed=True`` opens it read-only with ``X`` left on disk (anndata's backed mode)."""
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"File not found: {path}")
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not an .h5ad file.")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path} is not an .h5ad file (not HDF5); save AnnData with adata.write_h5ad().")
    try:
        adata = ad.read_h5ad(path, backed="r") if backed else ad.read_h5ad(path)
    except Exception as e:  # anndata raises many types for malformed files
        raise DataError(f"{path} is HDF5 but not a readable AnnData: {type(e).__name__}: {e}") from e
    return adata


def preprocess(
    adata: ad.AnnData,
    target_sum: float = 1e4,
    n_top_genes: int | None = None,
    layer: str | None = None,
    copy: bool = True,
) -> ad.AnnData:
    """Standard scanpy preprocessing in one call.

    Raw counts are kept in ``layers['counts']``, normalised to ``target_sum`` per
    cell and log1p-transformed; data that is already log-normalised is left as it
    is. With ``n_top_genes``, keeps the highly variable genes (scanpy's ``seurat``
    flavour on log data). What was done is recorded in ``uns['pdae_preprocessing']``.
    """
    import scanpy as sc
    import torch

    # scanpy's numba kernels reset the OpenMP thread count that torch shares (ignoring
    # OMP_NUM_THREADS): remember torch's and put it back, or training after
    # preprocessing in the same process can oversubscribe the cores
    threads = torch.get_num_threads()
    try:
        return _preprocess(sc, adata, target_sum, n_top_genes, layer, copy)
    finally:
        torch.set_num_threads(threads)


def _preprocess(sc: Any, adata: ad.AnnData, target_sum: float, n_top_genes: int | None, layer: str | None,
                copy: bool) -> ad.AnnData:
    if copy:
        adata = adata.copy()
    if layer is not None:
        if layer not in adata.layers:
            raise DataError(f"Layer {layer!r} is not in the AnnData (layers: {list(adata.layers.keys())}).")
        adata.X = adata.layers[layer].copy()
    kind = detect_x_kind(adata)
    steps: dict[str, Any] = {"input": kind}
    if kind == "counts":
        adata.layers["counts"] = adata.X.copy()
        if not np.issubdtype(adata.X.dtype, np.floating):
            adata.X = adata.X.astype(np.float32)
        sc.pp.normalize_total(adata, target_sum=target_sum)
        sc.pp.log1p(adata)
        steps.update({"normalize_total": target_sum, "log1p": True})
    if n_top_genes is not None and n_top_genes < adata.n_vars:
        sc.pp.highly_variable_genes(adata, n_top_genes=int(n_top_genes), flavor="seurat")
        adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
        steps["highly_variable_genes"] = int(n_top_genes)
    adata.uns["pdae_preprocessing"] = steps
    return adata
