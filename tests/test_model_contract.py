"""The contract every registered model type fulfils (pdae_core.models.catalog.MODEL_TYPES).

Each test runs once per model type, so a new model is covered by registering it: its
network is a PerturbationModule, it trains, predicts in the shared schema, embeds,
and survives a save / load round trip with identical predictions.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import pdae_core.models  # noqa: F401  (imports, hence registers, every model type)
from pdae_core.models.base import PerturbationModel
from pdae_core.models.catalog import MODEL_TYPES, build_model
from pdae_core.models.hparams import DATA_FIELDS, hyperparameter_fields
from pdae_core.models.module import PerturbationModule
from pdae_core.train.distributed import Shard

MODEL_KEYS = sorted(MODEL_TYPES)
FIT = dict(max_epochs=2, batch_size=64, seed=0, accelerator="cpu", eval_every=1)
SCHEMA = ["condition", "target", "source_cell", "source_condition", "draw", "kind"]


class _OneRank(Shard):
    """The shard of a one-process "group": gathering is the identity."""

    def gather(self, t):
        return t


def a_double(adata) -> str:
    return str(adata.obs["condition"][adata.obs["n_perturbations"] == 2].iloc[0])


def build(key: str, adata) -> PerturbationModel:
    return MODEL_TYPES[key].from_anndata(adata, perturbation_key="condition")


@pytest.fixture(scope="module")
def trained():
    """Every model type trained for two epochs on the tiny synthetic data (built once)."""
    from pdae_core.data.synthetic import make_synthetic

    adata, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=30, hidden=16, n_doubles=3,
                              cells_per_condition=40, seed=1)
    cache = {}

    def get(key: str):
        if key not in cache:
            model = build(key, adata)
            hist = model.fit(adata, holdout=[a_double(adata)], **FIT)
            cache[key] = (model, hist)
        return adata, *cache[key]

    return get


def test_the_four_models_are_registered():
    assert {"pdae", "samsvae", "sccvae", "fcr"} <= set(MODEL_KEYS)


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_registration_and_classes(key, tiny_adata):
    cls = MODEL_TYPES[key]
    assert issubclass(cls, PerturbationModel) and cls.model_type == key
    assert dataclasses.is_dataclass(cls.config_class)
    assert issubclass(cls.module_class, PerturbationModule)
    model = build(key, tiny_adata)
    assert isinstance(model.module, PerturbationModule) and isinstance(model.module, cls.module_class)
    assert isinstance(model.config, cls.config_class)
    assert isinstance(model.module.supports_shard, bool)


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_module_hooks_follow_the_contract(key, tiny_adata):
    model = build(key, tiny_adata)
    module = model.module
    # optimizer groups: every parameter exactly once, each group with a positive lr
    groups = module.optimizer_groups(1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in module.parameters()) and len(set(ids)) == len(ids)
    assert all(g["lr"] > 0 for g in groups)
    # init_from_data draws no random numbers (the same seed gives the same run with or without it)
    X = torch.as_tensor(model.registry.expression(tiny_adata))
    state = torch.random.get_rng_state()
    module.init_from_data(X)
    assert torch.equal(torch.random.get_rng_state(), state)
    # loss(x, labels, shard=None): a dict with a finite scalar "loss", reproducible from the global
    # seed (in eval mode: a loss may keep training state, e.g. SCCVAE's KL warm-up step count)
    x, labels = model._tensors(tiny_adata[::6])
    assert len(set(tiny_adata[::6].obs["condition"])) > 2
    torch.manual_seed(3)
    out = module.loss(x, labels)
    torch.manual_seed(3)
    again = module.loss(x, labels, None)
    assert "loss" in out and out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert all(torch.as_tensor(v).numel() == 1 for v in out.values())
    assert out.keys() == again.keys() and all(torch.equal(out[k], again[k]) for k in out)
    # a shard: honoured (supports_shard) or ignored; a one-rank shard gives the plain loss either way
    torch.manual_seed(3)
    sharded = module.loss(x, labels, _OneRank((len(x),), 0))
    for k in out:
        torch.testing.assert_close(sharded[k], out[k], rtol=1e-6, atol=1e-6)
    module.train()
    module.loss(x, labels)["loss"].backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())
    module.eval()
    # embed, transfer, perturbation_matrix: shapes and the generator
    z = module.embed(x, labels)
    assert z.dim() == 2 and z.shape[0] == len(x)
    target = torch.as_tensor(model.registry.label_vector(a_double(tiny_adata))).expand(len(x), -1)
    with torch.no_grad():
        a = module.transfer(x, labels, target, generator=torch.Generator().manual_seed(1))
        b = module.transfer(x, labels, target, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    with torch.no_grad():  # encoding once for many targets gives the same cells and draws as transfer
        c = module.transfer_from(module.source_state(x, labels), target, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, c)
    assert module.perturbation_matrix.shape[1] == model.registry.n_perturbations


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_fit_predict_latent(key, trained):
    adata, model, hist = trained(key)
    assert model.is_trained and hist.steps > 0 and hist.records
    assert all(np.isfinite(r["train_loss"]) for r in hist.records)
    target = a_double(adata)
    src = adata[adata.obs["condition"] == "control"]
    pred = model.predict(src, target, seed=0, n_draws=2)
    assert list(pred.obs.columns[: len(SCHEMA)]) == SCHEMA
    assert pred.n_obs == 2 * src.n_obs and list(pred.var_names) == list(adata.var_names)
    assert (pred.obs["target"] == target).all() and (pred.obs["kind"] == "predicted").all()
    assert sorted(set(pred.obs["draw"])) == [0, 1]
    assert list(pred.obs["source_cell"][: src.n_obs]) == list(src.obs_names)
    assert pred.uns["pdae_prediction"]["model_type"] == key
    assert np.isfinite(np.asarray(pred.X)).all()
    # the same seed gives the same cells; another seed other cells
    np.testing.assert_array_equal(model.predict(src, target, seed=0, n_draws=2).X, pred.X)
    if getattr(model.config, "noise_dim", 1) != 0:  # a deterministic decoder (pdae_profile) has no draws to vary
        assert not np.array_equal(model.predict(src, target, seed=1, n_draws=2).X, pred.X)
    z = model.latent(adata)
    assert z.ndim == 2 and z.shape[0] == adata.n_obs and np.isfinite(z).all()
    np.testing.assert_array_equal(model.latent(adata), z)
    emb = model.perturbation_embedding()
    assert list(emb.index) == model.registry.perturbations
    if model.additive_latent:
        assert emb.shape[1] == z.shape[1]


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_save_load_round_trip(key, trained, tmp_path):
    adata, model, _ = trained(key)
    model.save(tmp_path / key)
    loaded = PerturbationModel.load(tmp_path / key, adata=adata)
    assert type(loaded) is type(model) and loaded.config == model.config
    a, b = model.module.state_dict(), loaded.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    src = adata[adata.obs["condition"] == "control"][:25]
    target = a_double(adata)
    p1, p2 = model.predict(src, target, seed=4), loaded.predict(src, target, seed=4)
    np.testing.assert_array_equal(p1.X, p2.X)
    assert p1.obs.equals(p2.obs)
    np.testing.assert_array_equal(model.latent(adata), loaded.latent(adata))
    assert loaded.holdout == model.holdout and loaded.train_conditions == model.train_conditions
    assert loaded.seen_perturbations == model.seen_perturbations


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_every_hyperparameter_is_declared(key):
    """Every hyperparameter of every model type's config carries a help text (``hp``), and
    its declared choices, if any, include its default; the declarations stay out of the
    config's values."""
    cls = MODEL_TYPES[key].config_class
    fields = hyperparameter_fields(cls)
    assert fields and [f.name for f in fields] == [f.name for f in dataclasses.fields(cls) if f.name not in DATA_FIELDS]
    for f in fields:
        assert isinstance(f.metadata.get("help"), str) and f.metadata["help"].strip(), f"{key}.{f.name}: no help text"
        choices = f.metadata.get("choices")
        assert choices is None or f.default in choices, f"{key}.{f.name}: default not among its choices"
    config = cls(n_genes=3, n_perturbations=2)
    assert set(dataclasses.asdict(config)) == set(config.to_dict()) == {f.name for f in dataclasses.fields(cls)}
    assert "help" not in config.to_dict()


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_seen_perturbations(key, trained):
    adata, model, _ = trained(key)
    K = model.registry.n_perturbations
    used = [p for j, p in enumerate(model.registry.perturbations) if any(model.train_labels[:, j] != 0)]
    assert model.seen_perturbations == used and len(used) == K  # the held-out double's parts are seen
    fresh = build(key, adata)
    assert fresh.seen_perturbations == []  # nothing trained yet
    fresh.train_labels = np.zeros((3, K), dtype=np.float32)
    fresh.train_labels[1, 2] = 1.0
    fresh.train_labels[2, [0, 2]] = -0.5  # a negative dose counts as seen
    assert fresh.seen_perturbations == [model.registry.perturbations[0], model.registry.perturbations[2]]


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_build_model(key, tiny_adata):
    reference = build(key, tiny_adata)
    reg = reference.registry
    cls = MODEL_TYPES[key]
    has_latent = "latent_dim" in {f.name for f in dataclasses.fields(cls.config_class)}
    model = build_model(key, reg, seed=3, latent_dim=5)
    assert type(model) is cls and model.init_seed == 3 and model.registry is reg
    expected = cls(reg, seed=3, **({"latent_dim": 5} if has_latent else {}))
    assert model.config == expected.config
    assert (model.config.latent_dim == 5) if has_latent else (model.config == reference.config)
    a, b = model.module.state_dict(), expected.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="bad hyperparameter"):
        build_model(key, reg, no_such_hyperparameter=1)  # known to no model type: rejected


def test_build_model_rejects_an_unknown_type(tiny_adata):
    reg = build("pdae", tiny_adata).registry
    with pytest.raises(ValueError, match="unknown model type 'nope'.*pdae"):
        build_model("nope", reg)


# ---- the base class's defaults ----------------------------------------------------------------------


class _Shift(PerturbationModule):
    """The smallest module: a latent mean shift per perturbation, identity encoder/decoder."""

    def __init__(self, n_genes: int, n_perturbations: int):
        super().__init__()
        self.W = torch.nn.Linear(n_perturbations, n_genes, bias=False)
        self.scale = torch.nn.Parameter(torch.ones(n_genes))

    def loss(self, x, labels, shard=None):
        r = (x - self.W(labels)) / self.scale
        return {"loss": (0.5 * r * r + torch.log(self.scale)).mean(), "sq": (r * r).mean()}

    def embed(self, x, labels):
        return x - self.W(labels)

    def transfer(self, x, labels, target, generator=None):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self.embed(x, labels) + self.W(target) + 0.01 * noise

    @property
    def perturbation_matrix(self):
        return self.W.weight


def test_base_class_is_abstract():
    class NoLoss(PerturbationModule):
        def embed(self, x, labels):
            return x

        def transfer(self, x, labels, target, generator=None):
            return x

        @property
        def perturbation_matrix(self):
            return torch.zeros(1, 1)

    with pytest.raises(TypeError, match="loss"):
        NoLoss()
    with pytest.raises(TypeError):
        PerturbationModule()


def test_base_class_defaults():
    m = _Shift(5, 2)
    assert m.supports_shard is False
    (group,) = m.optimizer_groups(0.01)
    assert group["lr"] == 0.01 and [id(p) for p in group["params"]] == [id(p) for p in m.parameters()]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    X = torch.rand(10, 5)
    rng = torch.random.get_rng_state()
    assert m.init_from_data(X) is None
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    x, lab = torch.rand(4, 5), torch.eye(2)[[0, 1, 0, 1]]
    torch.testing.assert_close(m(x, lab)["loss"], m.loss(x, lab)["loss"])  # forward is the loss


def test_training_loop_uses_only_the_contract(rng):
    """A module with the base class's defaults trains in the shared loop and learns its shifts."""
    from pdae_core.train.loop import TrainConfig, train_module

    W = np.array([[2.0, 0, -1, 0, 0], [0, 0, 0, 3, 1]], dtype=np.float32)
    groups = np.repeat(np.arange(3), 60)
    L = np.zeros((180, 2), dtype=np.float32)
    L[groups == 1, 0] = 1.0
    L[groups == 2, 1] = 1.0
    X = (rng.normal(size=(180, 5)) * 0.1 + L @ W).astype(np.float32)
    torch.manual_seed(0)
    m = _Shift(5, 2)
    cfg = TrainConfig(max_epochs=60, batch_size=30, cells_per_condition=10, lr=0.05, seed=0, accelerator="cpu",
                      ema_decay=None, eval_every=5)
    hist = train_module(m, X, L, groups, cfg)
    assert hist.steps > 0 and "train_sq" in hist.records[-1] and hist.best_val is not None
    np.testing.assert_allclose(m.perturbation_matrix.detach().numpy(), W.T, atol=0.1)


def test_prediction_size_bound():
    from pdae_core.errors import DataError
    from pdae_core.models.prediction import MAX_PREDICTED_VALUES, check_prediction_size, max_predicted_cells

    assert max_predicted_cells(2000) == MAX_PREDICTED_VALUES // 2000
    check_prediction_size(max_predicted_cells(2000), 2000)
    with pytest.raises(DataError, match="more than one prediction may hold"):
        check_prediction_size(max_predicted_cells(2000) + 1, 2000)
