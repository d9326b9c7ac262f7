"""CGCNN model and the CGCNN ensemble surrogate: training, uncertainty, seeds, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Element, Lattice, Structure
from torch_geometric.data import Batch

import discovery.surrogates.cgcnn_ensemble as ens_mod
from discovery.surrogates.cgcnn_config import CGCNNEnsembleConfig
from discovery.errors import ConfigError, DataError, DiscoveryError, NotFittedError
from discovery.featurize.graphs import ATOM_FEATURE_DIM, structure_to_graph
from discovery.models.cgcnn import CGCNN
from discovery.protocols import Surrogate
from discovery.records import Candidate, Prediction
from discovery.surrogates.cgcnn_ensemble import CGCNNEnsembleSurrogate

torch.set_num_threads(1)

CATIONS = ["Li", "Na", "K", "Rb", "Cs"]
ANIONS = ["F", "Cl", "Br", "I"]
N_TRAIN = 40


def _alkali_halides(n: int, seed: int) -> tuple[list[Candidate], np.ndarray]:
    """Two-atom rocksalt / CsCl cells with strained lattices and a smooth synthetic target.

    Target (eV/atom): an electronegativity term (composition), a quadratic strain penalty (volume
    per atom) and a small prototype offset.
    """
    rng = np.random.default_rng(seed)
    cands, ys = [], []
    for i in range(n):
        cat, an = str(rng.choice(CATIONS)), str(rng.choice(ANIONS))
        bond = Element(cat).ionic_radii[1] + Element(an).ionic_radii[-1]
        strain = rng.uniform(0.92, 1.08)
        cscl = bool(rng.integers(2))
        if cscl:
            lattice = Lattice.cubic(2 * bond / np.sqrt(3) * strain)
        else:
            a = 2 * bond * strain / np.sqrt(2)
            lattice = Lattice.from_parameters(a, a, a, 60, 60, 60)
        s = Structure(lattice, [cat, an], [[0, 0, 0], [0.5, 0.5, 0.5]])
        y = -0.6 * (Element(an).X - Element(cat).X) + 40.0 * (strain - 1) ** 2 - 0.1 * cscl
        cands.append(Candidate(id=f"ah-{seed}-{i}", structure=s.as_dict(),
                               formula=s.composition.reduced_formula, generator="test"))
        ys.append(y)
    return cands, np.array(ys)


def _config(**kw) -> CGCNNEnsembleConfig:
    """The cpu preset, shortened; batches of 8 give 4 optimiser steps per epoch on 32 labels."""
    return CGCNNEnsembleConfig(**{"preset": "cpu", "ensemble_size": 3, "max_epochs": 150, "batch_size": 8,
                                  **kw})


def _means(preds: list[Prediction]) -> np.ndarray:
    return np.array([p.mean for p in preds])


@pytest.fixture(scope="module")
def data():
    cands, y = _alkali_halides(60, seed=0)
    return cands[:N_TRAIN], y[:N_TRAIN], cands[N_TRAIN:], y[N_TRAIN:]


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory):
    train, y_train, _, _ = data
    surrogate = CGCNNEnsembleSurrogate(_config(), seed=0, checkpoint_dir=tmp_path_factory.mktemp("ckpt"))
    report = surrogate.fit(train, y_train)
    return surrogate, report


# ----------------------------------------------------------------------------- model


def test_model_forward_shapes_and_gradients(data):
    train, _, _, _ = data
    batch = Batch.from_data_list([structure_to_graph(c.pmg, 8.0, 12) for c in train[:3]])
    torch.manual_seed(0)
    model = CGCNN(ATOM_FEATURE_DIM, 41, atom_fea_len=16, n_conv=2, h_fea_len=24, n_h=2)
    out = model(batch)
    assert out.shape == (3,)
    assert model.embed(batch).shape == (3, 24)
    out.pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.embedding.weight.grad.abs().sum() > 0
    assert all(conv.lin_f.weight.grad.abs().sum() > 0 for conv in model.convs)
    # a crystal's prediction does not depend on the other crystals in the batch (eval mode)
    model.eval()
    single = model(Batch.from_data_list([batch.get_example(1)]))
    assert single.item() == pytest.approx(model(batch)[1].item(), abs=1e-5)


# ----------------------------------------------------------------------------- fitting


def test_ensemble_fit_learns_and_generalises(data, fitted):
    _, y_train, test, y_test = data
    surrogate, report = fitted
    assert isinstance(surrogate, Surrogate) and surrogate.is_fitted
    assert surrogate.property == "formation_energy_per_atom"
    assert report.n_train + report.n_val == N_TRAIN and report.n_val == 8
    assert len(report.epochs) == 3 and all(1 <= e <= 150 for e in report.epochs)
    assert report.val_mae is not None and report.wall_s > 0
    assert report.train_mae < 0.3 * y_train.std()
    preds = surrogate.predict(test)
    assert [p.candidate_id for p in preds] == [c.id for c in test]
    assert {p.model for p in preds} == {"cgcnn-ensemble"}
    test_mae = np.mean(np.abs(_means(preds) - y_test))
    baseline = np.mean(np.abs(y_train.mean() - y_test))
    # seeds 0..3 of data and surrogate give 0.28-0.55 of the baseline; 0.7 leaves room for BLAS noise
    assert test_mae < 0.7 * baseline, (test_mae, baseline)


def test_std_is_positive_and_varies_between_candidates(data, fitted):
    _, _, test, _ = data
    stds = np.array([p.std for p in fitted[0].predict(test)])
    assert np.all(stds > 0)
    assert stds.max() > 1.5 * stds.min()


def test_embed_shape(data, fitted):
    _, _, test, _ = data
    emb = fitted[0].embed(test)
    assert emb.shape == (len(test), 64) and np.isfinite(emb).all()
    assert not np.allclose(emb[0], emb[1])


def test_predictions_are_reproducible_for_the_same_seed(data, fitted):
    train, y_train, test, _ = data
    again = CGCNNEnsembleSurrogate(_config(), seed=0)
    report = again.fit(train, y_train)
    assert report.epochs == fitted[1].epochs
    np.testing.assert_allclose(_means(again.predict(test)), _means(fitted[0].predict(test)), atol=1e-6)
    other = CGCNNEnsembleSurrogate(_config(max_epochs=5), seed=1)
    other.fit(train, y_train)
    reference = CGCNNEnsembleSurrogate(_config(max_epochs=5), seed=0)
    reference.fit(train, y_train)
    assert not np.allclose(_means(other.predict(test)), _means(reference.predict(test)))


def test_small_fit_has_no_validation_split_and_leaves_global_rng_alone(data):
    train, y_train, _, _ = data
    state = torch.get_rng_state()
    surrogate = CGCNNEnsembleSurrogate(_config(max_epochs=7, ensemble_size=2), seed=5)
    report = surrogate.fit(train[:4], y_train[:4])
    assert torch.equal(state, torch.get_rng_state())
    assert (report.n_train, report.n_val, report.val_mae) == (4, 0, None)
    assert report.epochs == (7, 7) and report.checkpoint is None


def test_graphs_are_cached_per_candidate(data, monkeypatch):
    train, y_train, _, _ = data
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return structure_to_graph(*args, **kwargs)

    monkeypatch.setattr(ens_mod, "structure_to_graph", counting)
    surrogate = CGCNNEnsembleSurrogate(_config(max_epochs=2, ensemble_size=1), seed=0)
    surrogate.fit(train[:6], y_train[:6])
    surrogate.fit(train[:6], y_train[:6])
    surrogate.predict(train[:6])
    surrogate.embed(train[:3])
    assert len(calls) == 6


def test_fit_rejects_bad_input(data):
    train, y_train, _, _ = data
    surrogate = CGCNNEnsembleSurrogate(_config(), seed=0)
    with pytest.raises(ValueError, match="candidates but"):
        surrogate.fit(train[:3], y_train[:2])
    with pytest.raises(ValueError, match="at least 2"):
        surrogate.fit(train[:1], y_train[:1])
    with pytest.raises(ValueError, match="finite"):
        surrogate.fit(train[:3], [0.0, float("nan"), 1.0])


def test_predict_before_fit_raises(data):
    surrogate = CGCNNEnsembleSurrogate(_config(), seed=0)
    assert not surrogate.is_fitted
    for call in (lambda: surrogate.predict(data[0][:2]), lambda: surrogate.embed(data[0][:2]),
                 lambda: surrogate.save("unused.pt")):
        with pytest.raises(NotFittedError, match="before fit"):
            call()
    assert issubclass(NotFittedError, DiscoveryError)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_gives_identical_predictions(data, fitted, tmp_path):
    _, _, test, _ = data
    surrogate, report = fitted
    assert report.checkpoint is not None and report.checkpoint.endswith(".pt")
    assert [p.name for p in Path(report.checkpoint).parent.iterdir()] == [Path(report.checkpoint).name]
    restored = CGCNNEnsembleSurrogate(_config(), seed=123)
    restored.load(report.checkpoint)
    assert restored.is_fitted
    assert restored.predict(test) == surrogate.predict(test)
    np.testing.assert_array_equal(restored.embed(test), surrogate.embed(test))
    path = surrogate.save(tmp_path / "sub" / "again.pt")
    again = CGCNNEnsembleSurrogate(_config(), seed=7)
    again.load(path)
    assert again.predict(test[:3]) == surrogate.predict(test[:3])


def test_corrupt_or_foreign_checkpoints_raise_data_error(fitted, tmp_path):
    surrogate = CGCNNEnsembleSurrogate(_config(), seed=0)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint" * 10)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(fitted[1].checkpoint, "rb").read()[:2000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    for path in (garbage, truncated, foreign, tmp_path / "missing.pt"):
        with pytest.raises(DataError) as info:
            surrogate.load(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message
    assert not surrogate.is_fitted


def test_checkpoint_with_another_config_raises_data_error(fitted):
    mismatched = CGCNNEnsembleSurrogate(_config(atom_fea_len=16), seed=0)
    with pytest.raises(DataError, match="atom_fea_len") as info:
        mismatched.load(fitted[1].checkpoint)
    assert fitted[1].checkpoint in str(info.value)
    assert not mismatched.is_fitted


# ----------------------------------------------------------------------------- devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="surrogate.device"):
        CGCNNEnsembleSurrogate(_config(device="cuda"), seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_predict_and_checkpoint_load_on_cpu(data, tmp_path):
    train, y_train, test, _ = data
    gpu = CGCNNEnsembleSurrogate(_config(device="cuda", max_epochs=10), seed=0)
    gpu.fit(train, y_train)
    preds = gpu.predict(test)
    cpu = CGCNNEnsembleSurrogate(_config(device="cpu", max_epochs=10), seed=0)
    cpu.load(gpu.save(tmp_path / "gpu.pt"))  # device is not part of the checkpoint identity
    np.testing.assert_allclose(_means(cpu.predict(test)), _means(preds), atol=1e-4)


# ----------------------------------------------------------------------------- recalibration


def test_recalibration_scales_std_and_members_and_survives_a_checkpoint(data, fitted, tmp_path):
    train, y_train, test, _ = data
    surrogate, report = fitted
    scale = surrogate.variance_scale
    calibration = surrogate.last_calibration
    assert calibration is not None and calibration["variance_scale"] == scale
    assert 0.1 <= scale <= 100 and scale != 1.0
    assert calibration["before"]["n"] == calibration["after"]["n"] == report.n_val
    # the same seed without recalibration trains the same members: only the std changes, by the scale
    raw = CGCNNEnsembleSurrogate(_config(recalibrate=False), seed=0)
    raw.fit(train, y_train)
    assert raw.variance_scale == 1.0 and raw.last_calibration is None
    scaled, plain = surrogate.predict(test), raw.predict(test)
    np.testing.assert_allclose(_means(scaled), _means(plain), atol=1e-6)
    np.testing.assert_allclose([p.std for p in scaled], [scale * p.std for p in plain], rtol=1e-4)
    # members: (n_members, n) in eV/atom, mean and population std agree with predict
    members = surrogate.predict_members(test)
    assert members.shape == (3, len(test))
    np.testing.assert_allclose(members.mean(axis=0), _means(scaled), atol=1e-5)
    np.testing.assert_allclose(members.std(axis=0), [p.std for p in scaled], rtol=1e-4, atol=1e-7)
    # checkpoint round trip keeps the scale and the calibration report
    restored = CGCNNEnsembleSurrogate(_config(), seed=9)
    restored.load(surrogate.save(tmp_path / "scaled.pt"))
    assert restored.variance_scale == scale and restored.last_calibration == calibration
    assert restored.predict(test) == scaled


def test_version_1_checkpoint_is_a_one_line_data_error(fitted, tmp_path):
    payload = torch.load(fitted[1].checkpoint, map_location="cpu", weights_only=True)
    old = tmp_path / "old.pt"
    torch.save({**payload, "version": 1}, old)
    surrogate = CGCNNEnsembleSurrogate(_config(), seed=0)
    with pytest.raises(DataError, match="version 1, expected 2") as info:
        surrogate.load(old)
    assert str(old) in str(info.value) and "\n" not in str(info.value)
    assert not surrogate.is_fitted


def test_no_validation_split_means_no_recalibration(data):
    train, y_train, _, _ = data
    surrogate = CGCNNEnsembleSurrogate(_config(max_epochs=3, ensemble_size=2), seed=5)
    surrogate.fit(train[:4], y_train[:4])
    assert surrogate.variance_scale == 1.0 and surrogate.last_calibration is None
    assert surrogate.predict_members(train[:3]).shape == (2, 3)
    with pytest.raises(NotFittedError):
        CGCNNEnsembleSurrogate(_config(), seed=0).predict_members(train[:2])
