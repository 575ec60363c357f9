"""Synthetic perturbation data drawn from the PDAE generative model, with known truth.

    z_base ~ N(0, I_d);  z = z_base + W l;  x = softplus(A2 elu(A1 z + b1) + b2 + sigma * e),  e ~ N(0, I_G)

``W`` (d x K) holds each elementary perturbation's latent shift and combinations add
their parts' shifts, exactly the PDAE assumption; the decoder is a random
nonlinear map, so shifts that add in latent space do not add in gene space (the
gene-space additive baseline is wrong by construction). Values are non-negative,
like log-normalised expression.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import anndata as ad
import numpy as np
import pandas as pd


@dataclass
class SyntheticTruth:
    """The generative model behind a synthetic dataset: sample any label exactly."""

    W: np.ndarray  # (latent_dim, K)
    A1: np.ndarray
    b1: np.ndarray
    A2: np.ndarray
    b2: np.ndarray
    noise_sd: float
    perturbations: list[str]
    separator: str = "+"

    def label(self, condition: str) -> np.ndarray:
        vec = np.zeros(len(self.perturbations))
        if condition == "control":
            return vec
        idx = {p: i for i, p in enumerate(self.perturbations)}
        for p in condition.split(self.separator):
            vec[idx[p]] += 1.0
        return vec

    def decode(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h = z @ self.A1.T + self.b1
        h = np.where(h > 0, h, np.expm1(np.minimum(h, 0)))  # ELU
        pre = h @ self.A2.T + self.b2 + self.noise_sd * rng.standard_normal((z.shape[0], self.A2.shape[0]))
        return np.logaddexp(0.0, pre).astype(np.float32)  # softplus

    def sample(self, condition: str | np.ndarray, n: int, seed: int = 0) -> np.ndarray:
        """``n`` fresh cells (n x G) under a condition name or label vector."""
        rng = np.random.default_rng(seed)
        lab = self.label(condition) if isinstance(condition, str) else np.asarray(condition, dtype=float)
        z = rng.standard_normal((n, self.W.shape[0])) + self.W @ lab
        return self.decode(z, rng)

    def to_uns(self) -> dict:
        return {
            "W": self.W, "A1": self.A1, "b1": self.b1, "A2": self.A2, "b2": self.b2,
            "noise_sd": float(self.noise_sd), "perturbations": np.asarray(self.perturbations, dtype=str),
            "separator": self.separator,
        }

    @classmethod
    def from_uns(cls, d: dict) -> SyntheticTruth:
        return cls(
            W=np.asarray(d["W"]), A1=np.asarray(d["A1"]), b1=np.asarray(d["b1"]), A2=np.asarray(d["A2"]),
            b2=np.asarray(d["b2"]), noise_sd=float(d["noise_sd"]),
            perturbations=[str(p) for p in d["perturbations"]], separator=str(d.get("separator", "+")),
        )


def make_synthetic(
    n_perturbations: int = 8,
    latent_dim: int = 6,
    n_genes: int = 100,
    hidden: int = 64,
    n_doubles: int = 12,
    cells_per_condition: int = 200,
    shift_scale: float = 3.0,
    noise_sd: float = 0.2,
    seed: int = 0,
) -> tuple[ad.AnnData, SyntheticTruth]:
    """Control, every single and ``n_doubles`` random doubles (``A+B``), with the truth.

    ``obs['condition']`` names the condition, ``obs['n_perturbations']`` its order;
    ``uns['synthetic_truth']`` stores the generator (see :meth:`SyntheticTruth.from_uns`).
    """
    rng = np.random.default_rng(seed)
    K = n_perturbations
    names = [f"P{i + 1}" for i in range(K)]
    W = rng.standard_normal((latent_dim, K)) * shift_scale / np.sqrt(latent_dim)
    A1 = rng.standard_normal((hidden, latent_dim)) * 1.2 / np.sqrt(latent_dim)
    b1 = rng.standard_normal(hidden) * 0.3
    A2 = rng.standard_normal((n_genes, hidden)) * 1.5 / np.sqrt(hidden)
    b2 = rng.standard_normal(n_genes) * 0.5
    truth = SyntheticTruth(W, A1, b1, A2, b2, float(noise_sd), names)
    pairs = list(combinations(range(K), 2))
    pick = rng.choice(len(pairs), size=min(n_doubles, len(pairs)), replace=False)
    conds = ["control", *names, *sorted(f"{names[pairs[k][0]]}+{names[pairs[k][1]]}" for k in pick)]
    X, obs = [], []
    for j, c in enumerate(conds):
        X.append(truth.sample(c, cells_per_condition, seed=seed * 100003 + j + 1))
        obs += [c] * cells_per_condition
    obs_df = pd.DataFrame({"condition": pd.Categorical(obs, categories=conds)})
    obs_df["n_perturbations"] = [0 if c == "control" else len(c.split("+")) for c in obs]
    obs_df.index = [f"cell{i}" for i in range(len(obs_df))]
    adata = ad.AnnData(
        X=np.concatenate(X).astype(np.float32), obs=obs_df,
        var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]),
    )
    adata.uns["synthetic_truth"] = truth.to_uns()
    adata.uns["synthetic_params"] = {
        "n_perturbations": K, "latent_dim": latent_dim, "n_genes": n_genes, "hidden": hidden,
        "n_doubles": int(len(pick)), "cells_per_condition": cells_per_condition,
        "shift_scale": shift_scale, "noise_sd": noise_sd, "seed": seed,
    }
    return adata, truth


class SyntheticOracle:
    """The best possible predictor on synthetic data: fresh cells from the true
    generative model, as many as there are source cells (the benchmark's "oracle")."""

    model_type = "oracle"

    def __init__(self, truth: SyntheticTruth):
        self.truth = truth

    @classmethod
    def from_anndata(cls, adata: ad.AnnData) -> SyntheticOracle:
        if "synthetic_truth" not in adata.uns:
            from ..errors import DataError

            raise DataError("The oracle needs synthetic data with its truth in uns['synthetic_truth'] "
                            "(pdae_core.data.synthetic.make_synthetic / load_dataset('synthetic')).")
        return cls(SyntheticTruth.from_uns(dict(adata.uns["synthetic_truth"])))

    def predict(self, source: ad.AnnData, target: str, seed: int = 0) -> ad.AnnData:
        X = self.truth.sample(target, source.n_obs, seed=seed + 12345)
        obs = pd.DataFrame({"target": target, "source_cell": np.asarray(source.obs_names, dtype=str)})
        obs.index = [f"{s}->{target}" for s in obs["source_cell"]]
        return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=source.var_names.copy()))
