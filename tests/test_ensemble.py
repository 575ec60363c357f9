"""Ensembles (issue 15 item 2): N networks of any model type, trained with seeds seed..seed+N-1,
predicting the mixture of their cells, with the spread of the change across members; one
checkpoint under the same integrity rules."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import pdae_core as pc
from pdae_core import CheckpointError
from pdae_core.cli import main as cli_main
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models.catalog import MODEL_TYPES, build_model
from pdae_core.models.ensemble import Ensemble, change_summary, ensemble_of
from pdae_core.models.integrity import seal
from pdae_core.train.loop import Callback

SMALL = {"pdae": dict(latent_dim=3, hidden_dims=(16,), noise_dim=2, n_sources=4),
         "samsvae": dict(latent_dim=3, hidden_dims=(16,)),
         "sccvae": dict(latent_dim=3, hidden_dims=(16,), n_sources=4),
         "fcr": dict(zx_dim=4, zt_dim=4, ztx_dim=4, hidden_dims=(16,)),
         "pdae_profile": dict(latent_dim=3, hidden_dims=(16,))}
FIT = dict(holdout=["P1+P4"], max_epochs=2, batch_size=64, accelerator="cpu")


@pytest.fixture(scope="module")
def adata():
    a, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=20, hidden=16, n_doubles=3,
                          cells_per_condition=30, seed=3)
    return a


def ctrl(a):
    return a[a.obs["condition"] == "control"]


def test_member_k_is_the_single_model_of_seed_k(adata):
    ens = pc.PDAE.from_anndata(adata, seed=5, n_members=3, **SMALL["pdae"])
    assert isinstance(ens, pc.PDAE) and isinstance(ens, Ensemble) and ens.n_members == 3
    ens.fit(adata, seed=10, **FIT)
    single = pc.PDAE.from_anndata(adata, seed=6, **SMALL["pdae"])
    single.fit(adata, seed=11, **FIT)  # init seed 5+1, training seed 10+1: member 1
    got, want = ens.module.members[1].state_dict(), single.module.state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    other = ens.module.members[0].state_dict()
    assert not all(torch.equal(other[k], want[k]) for k in want)  # members differ
    gen = [torch.Generator().manual_seed(0) for _ in range(2)]
    x = torch.as_tensor(ctrl(adata).X)
    lab, tgt = torch.zeros(len(x), 4), torch.tensor([[1.0, 0, 0, 1]]).expand(len(x), -1)
    torch.testing.assert_close(ens.module.members[1].transfer(x, lab, tgt, generator=gen[0]),
                               single.module.transfer(x, lab, tgt, generator=gen[1]), rtol=0, atol=0)
    recs = ens.history.records
    assert sorted({r["member"] for r in recs}) == [0, 1, 2]
    assert ens.history.steps == 3 * single.history.steps


def test_prediction_is_the_mixture_of_members(adata, monkeypatch):
    ens = pc.PDAE.from_anndata(adata, seed=0, n_members=4, **SMALL["pdae"])
    ens.fit(adata, **FIT)
    for k, member in enumerate(ens.module.members):  # each member predicts its own index
        monkeypatch.setattr(member, "transfer", lambda x, lab, t, generator=None, k=k: torch.full_like(x, float(k)))
    src = adata[np.repeat(np.flatnonzero(adata.obs["condition"] == "control"), 40)].copy()  # 1,200 source cells
    src.obs_names_make_unique()
    pred = ens.predict(src, "P1+P4", seed=7)
    which = pred.X[:, 0]
    assert np.all(pred.X == which[:, None])
    counts = np.bincount(which.astype(int), minlength=4) / len(which)
    np.testing.assert_allclose(counts, 0.25, atol=0.05)  # each member's share ~ 1/4
    np.testing.assert_array_equal(ens.predict(src, "P1+P4", seed=7).X, pred.X)  # seeded
    assert not np.array_equal(ens.predict(src, "P1+P4", seed=8).X, pred.X)
    assert pred.uns["pdae_prediction"]["n_members"] == 4


def test_change_summary_is_mean_and_spread_over_members():
    ch = np.array([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0], [2.0, 3.0, 2.0]])
    s = change_summary(ch, ["a", "b", "c"])
    np.testing.assert_allclose(s["change"], ch.mean(0))
    np.testing.assert_allclose(s["spread"], ch.std(0, ddof=1))
    assert s.loc["c", "spread"] == 0
    assert change_summary(ch[:1], ["a", "b", "c"])["spread"].isna().all()


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_every_model_type_trains_saves_loads_and_predicts_as_an_ensemble(adata, tmp_path, model_type):
    a = adata.copy()
    if model_type == "fcr":
        a.obs["line"] = "L1"
    reg = pc.setup_anndata(a, "condition", "control", covariate_key="line" if model_type == "fcr" else None)
    ens = build_model(model_type, reg, seed=0, n_members=2, **SMALL[model_type])
    assert type(ens) is ensemble_of(MODEL_TYPES[model_type]) and ens.model_type == model_type
    ens.fit(a, **FIT)
    src = ctrl(a)
    pred = ens.predict(src, "P1+P4", seed=0)
    changes = ens.member_changes(src, "P1+P4")
    assert pred.shape == (src.n_obs, a.n_vars) and changes.shape == (2, a.n_vars)
    assert np.all(np.isfinite(changes)) and not np.allclose(changes[0], changes[1])
    ens.save(tmp_path / "ens")
    cfg = json.loads((tmp_path / "ens" / "config.json").read_text())
    assert cfg["ensemble"] == {"n_members": 2} and cfg["model_type"] == model_type
    back = pc.load_model(tmp_path / "ens")
    assert type(back) is type(ens) and back.n_members == 2
    np.testing.assert_array_equal(back.predict(src, "P1+P4", seed=0).X, pred.X)
    np.testing.assert_allclose(back.member_changes(src, "P1+P4"), changes, rtol=1e-6, atol=1e-7)


def test_ensemble_checkpoint_is_protected_like_any_other(adata, tmp_path):
    ens = pc.PDAE.from_anndata(adata, seed=0, n_members=3, **SMALL["pdae"])
    ens.fit(adata, **FIT)
    ens.save(tmp_path / "ens")

    def edited(name, edit, reseal):
        d = tmp_path / name
        shutil.copytree(tmp_path / "ens", d)
        cfg = json.loads((d / "config.json").read_text())
        edit(cfg)
        (d / "config.json").write_text(json.dumps(seal(cfg) if reseal else cfg))
        return d

    fewer = lambda c: c["ensemble"].__setitem__("n_members", 2)  # noqa: E731
    with pytest.raises(CheckpointError, match="modified after saving"):
        pc.load_model(edited("a", fewer, reseal=False))
    with pytest.raises(CheckpointError, match=r"unexpected \['members\.2\."):
        pc.load_model(edited("b", fewer, reseal=True))
    for i, bad in enumerate([0, 65, "3", None, True]):
        with pytest.raises(CheckpointError, match="'ensemble' must be an object with n_members"):
            pc.load_model(edited(f"c{i}", lambda c, bad=bad: c["ensemble"].__setitem__("n_members", bad), True))
    with pytest.raises(CheckpointError, match=r"missing \['W\.weight'.*unexpected \['members\.0\."):
        pc.load_model(edited("d", lambda c: c.pop("ensemble"), reseal=True))


def test_cancelled_ensemble_keeps_the_members_trained_so_far(adata):
    class StopInSecondMember(Callback):
        def __init__(self):
            self.starts = 0

        def on_train_start(self, max_epochs, steps_per_epoch):
            self.starts += 1

        def should_stop(self):
            return self.starts >= 2

    ens = pc.PDAE.from_anndata(adata, seed=0, n_members=4, **SMALL["pdae"])
    hist = ens.fit(adata, callbacks=[StopInSecondMember()], **FIT)
    assert hist.cancelled and ens.n_members == 2


@pytest.mark.parametrize("bad", [0, -1, 65, 2.5, True, "3"])
def test_bad_member_counts(adata, bad):
    with pytest.raises(ValueError, match="An ensemble has 1 to 64 members"):
        pc.PDAE.from_anndata(adata, n_members=bad, **SMALL["pdae"])


def test_cli_trains_and_describes_an_ensemble(adata, tmp_path, capsys):
    data = tmp_path / "cells.h5ad"
    adata.write_h5ad(data)
    out = tmp_path / "ens"
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "64",
            "--latent-dim", "3", "--hidden-dims", "16", "--noise-dim", "2", "-q", "--accelerator", "cpu"]
    assert cli_main(args + ["--ensemble", "65"]) == 2
    assert "at most 64 networks" in capsys.readouterr().err and not out.exists()
    assert cli_main(args + ["--ensemble", "2"]) == 0
    assert "an ensemble of 2 networks" in capsys.readouterr().out
    assert cli_main(["info", str(out)]) == 0
    assert "pdae, an ensemble of 2 networks" in capsys.readouterr().out
    assert pc.load_model(out).n_members == 2


def test_ensemble_prediction_reports_the_change_and_its_spread(adata, tmp_path, capsys):
    ens = pc.PDAE.from_anndata(adata, seed=0, n_members=3, **SMALL["pdae"])
    ens.fit(adata, **FIT)
    src = ctrl(adata)
    pred = ens.predict(src, "P1+P4", seed=2)
    table = pred.varm["change_across_networks"]
    changes = ens.member_changes(src, "P1+P4", seed=2)
    np.testing.assert_allclose(table["mean"], changes.mean(0))
    np.testing.assert_allclose(table["spread"], changes.std(0, ddof=1))
    assert (table["spread"] > 0).all() and list(table.index) == list(adata.var_names)
    single = pc.PDAE.from_anndata(adata, seed=0, **SMALL["pdae"])
    single.fit(adata, **FIT)
    assert "change_across_networks" not in single.predict(src, "P1+P4").varm
    ens.save(tmp_path / "ens")
    cells = tmp_path / "cells.h5ad"
    adata.write_h5ad(cells)
    out = tmp_path / "pred.h5ad"
    assert cli_main(["predict", str(tmp_path / "ens"), "--data", str(cells), "--target", "P1+P4", "--target", "P2",
                     "--out", str(out)]) == 0
    assert "An ensemble of 3 networks" in capsys.readouterr().out
    import anndata as ad

    written = ad.read_h5ad(out).varm["change_across_networks"]
    assert list(written.columns) == ["P1+P4:mean", "P1+P4:spread", "P2:mean", "P2:spread"]
