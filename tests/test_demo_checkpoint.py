"""The bundled demo checkpoint loads safely and predicts the real held-out doubles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pdae_core import PDAE, load_model
from pdae_core.data.datasets import load_dataset
from pdae_core.eval.metrics import energy_distance
from pdae_core.models.checkpoint import read_config

CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "norman19_devel"
HOLDOUT = ["KLF1+MAP2K6", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2", "KLF1+TGFBR2"]


def test_demo_checkpoint_is_safetensors_and_json_only():
    assert sorted(p.name for p in CKPT.iterdir()) == ["config.json", "model.safetensors"]
    cfg = read_config(CKPT)
    assert cfg["model_type"] == "pdae"
    assert sorted(cfg["training"]["holdout"]) == sorted(HOLDOUT)


def test_demo_checkpoint_predicts_held_out_doubles(data_dir):
    adata = load_dataset("norman19_devel", data_dir=data_dir)
    model = load_model(CKPT, adata=adata)
    assert isinstance(model, PDAE)
    assert not set(HOLDOUT) & set(model.train_conditions)
    ctrl = adata[adata.obs["condition"] == "control"]
    ctrl_x = np.asarray(ctrl.X.toarray())
    with_effect = 0
    for cond in HOLDOUT:
        check = model.extrapolation_check(cond)
        assert check.in_span and not check.measured_in_training
        pred = model.predict(ctrl, cond, seed=0)
        assert pred.shape == (ctrl.n_obs, adata.n_vars)
        assert (pred.obs["target"] == cond).all()
        obs = np.asarray(adata[adata.obs["condition"] == cond].X.toarray())
        ed_model, ed_none = energy_distance(pred.X, obs), energy_distance(ctrl_x, obs)
        if ed_none > 0.3:  # a real effect: the prediction must be far better than "no change"
            with_effect += 1
            assert ed_model < 0.25 * ed_none, (cond, ed_model, ed_none)
        else:  # the two MAP2K3 doubles barely differ from control: stay within noise of the truth
            assert ed_model < 0.1, (cond, ed_model, ed_none)
    assert with_effect == 3
