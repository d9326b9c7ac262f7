"""Contract tests over every registered implementation of each protocol."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from discovery import registry
from discovery.build import ComponentSpec, build_component
from discovery.generators.cdvae.kind import CDVAEGeneratorConfig
from discovery.generators.composition_gan import (
    CompositionGANGeneratorConfig,
    CompositionVAEGeneratorConfig,
)
from discovery.generators.crystal_gan import CrystalGANGeneratorConfig
from discovery.generators.icsg3d import ICSG3DGeneratorConfig
from discovery.generators.lcom.kind import LCOMGeneratorConfig
from discovery.generators.random_symmetric import RandomSymmetricGeneratorConfig
from discovery.generators.substitution import SubstitutionGeneratorConfig
from discovery.oracles.chgnet_oracle import MLIPConfig
from discovery.oracles.emt_oracle import EMTConfig
from discovery.oracles.gpaw_oracle import GPAWConfig
from discovery.protocols import Generator, Oracle, Surrogate
from discovery.records import (
    Candidate,
    Evaluation,
    FitReport,
    Prediction,
    Provenance,
    Selection,
)
from discovery.structures import make_candidate, structural_problem
from discovery.surrogates.cgcnn_config import CGCNNEnsembleConfig
from discovery.surrogates.forest import ForestSurrogateConfig
from discovery.surrogates.lcom.kind import LCOMSurrogateConfig

CONFIGS = {
    ("generator", "substitution"): SubstitutionGeneratorConfig(n_per_round=6),
    ("generator", "random_symmetric"): RandomSymmetricGeneratorConfig(n_per_round=4),
    # a trained kind's checkpoint_dir is replaced by a small trained model (conftest.trained_model);
    # ICSG3D's decodes its training crystals, so its targeted samples are valid
    ("generator", "icsg3d"): ICSG3DGeneratorConfig(n_per_round=4, checkpoint_dir="untrained", latent_scale=0.1),
    ("generator", "crystal_gan"): CrystalGANGeneratorConfig(n_per_round=4, checkpoint_dir="untrained"),
    ("generator", "composition_gan"): CompositionGANGeneratorConfig(n_per_round=4, checkpoint_dir="untrained",
                                                                    samples=64),
    ("generator", "composition_vae"): CompositionVAEGeneratorConfig(n_per_round=4, checkpoint_dir="untrained",
                                                                    samples=64),
    ("generator", "cdvae"): CDVAEGeneratorConfig(n_per_round=4, checkpoint_dir="untrained"),
    ("generator", "lcom"): LCOMGeneratorConfig(n_per_round=4, checkpoint_dir="untrained"),
    ("surrogate", "cgcnn_ensemble"): CGCNNEnsembleConfig(ensemble_size=2, max_epochs=5),
    ("surrogate", "forest"): ForestSurrogateConfig(n_estimators=20),
    ("surrogate", "lcom"): LCOMSurrogateConfig(checkpoint_dir="untrained", fine_tune_steps=5),
    ("mlip", "chgnet"): MLIPConfig(max_steps=20),
    ("dft", "gpaw"): GPAWConfig(),
    ("dft", "emt"): EMTConfig(),
}


def test_every_registered_component_has_a_contract_config():
    registered = {(role, kind) for role in ("generator", "surrogate", "mlip", "dft") for kind in registry.kinds(role)}
    assert registered == set(CONFIGS)


def spec(role, kind, tmp_path, request=None):
    """The contract spec of a kind; a trained kind's checkpoint_dir is replaced by a small trained
    model of its first model family (conftest.trained_model)."""
    config = CONFIGS[(role, kind)]
    models = registry.get_kind(role, kind).models
    if models and request is not None:
        config = config.model_copy(update={"checkpoint_dir": request.getfixturevalue("trained_model")(models[0])})
    return ComponentSpec(role, config, ("K", "Rb", "Mg", "Cl"), 7, seed=3, workdir=tmp_path)


def kcl():
    return make_candidate(Structure(Lattice.cubic(6.3), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), "test")


def kmgcl3():
    s = Structure(Lattice.cubic(5.0), ["K", "Mg", "Cl", "Cl", "Cl"],
                  [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])
    return make_candidate(s, "test")


@pytest.mark.parametrize("kind", sorted(registry.kinds("generator")))
def test_generators_propose_valid_reproducible_candidates(kind, tmp_path, request):
    def build():
        return build_component(spec("generator", kind, tmp_path, request))

    gen = build()
    assert isinstance(gen, Generator)
    gen.update({"known": [kcl(), kmgcl3()], "hits": []})
    a = gen.propose(4, {}, np.random.default_rng(7))
    b = build()
    b.update({"known": [kcl(), kmgcl3()], "hits": []})
    assert [c.id for c in a] == [c.id for c in b.propose(4, {}, np.random.default_rng(7))]
    assert 1 <= len(a) <= 4  # every generator proposes something; its quality is its benchmark's

    for c in a:
        assert isinstance(c, Candidate) and c.generator == kind
        assert structural_problem(c.pmg) is None
        assert c.n_atoms <= 7
        assert {e.symbol for e in c.pmg.composition.elements} <= {"K", "Rb", "Mg", "Cl"}


@pytest.mark.parametrize("kind", sorted(registry.kinds("surrogate")))
def test_surrogates_fit_predict_embed(kind, tmp_path, request):
    import torch

    torch.set_num_threads(1)
    sur = build_component(spec("surrogate", kind, tmp_path, request))
    assert isinstance(sur, Surrogate)
    cands = []
    for a in (6.0, 6.2, 6.4, 6.6, 6.8):
        cands.append(make_candidate(Structure(Lattice.cubic(a), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), "t"))
    report = sur.fit(cands, [-2.0, -2.1, -2.05, -1.9, -1.8])
    assert isinstance(report, FitReport) and 0 < report.n_train <= 5 and report.variance_scale > 0
    preds = sur.predict(cands[:2])
    assert all(isinstance(p, Prediction) and np.isfinite(p.mean) and p.std >= 0 for p in preds)
    assert sur.embed(cands[:2]).shape[0] == 2
    members = np.asarray(sur.predict_members(cands[:2]))  # what Thompson sampling and the campaign use
    assert members.ndim == 2 and members.shape[1] == 2
    assert np.allclose(members.mean(axis=0), [p.mean for p in preds], atol=1e-5)


@pytest.mark.parametrize("role, kind", [("dft", k) for k in sorted(registry.kinds("dft"))] + [("mlip", "chgnet")])
def test_oracles_return_failure_records_instead_of_raising(role, kind, tmp_path):
    oracle = build_component(spec(role, kind, tmp_path))
    assert isinstance(oracle, Oracle)
    assert oracle.fingerprint == build_component(spec(role, kind, tmp_path)).fingerprint
    broken = make_candidate(Structure(Lattice.cubic(5.0), ["K", "Cl"], [[0, 0, 0], [0.02, 0, 0]]), "test")
    ev = oracle.evaluate(broken)
    assert isinstance(ev, Evaluation)
    assert ev.candidate_id == broken.id and ev.fidelity == oracle.fidelity
    if role == "dft":  # DFT oracles must refuse atoms 0.1 A apart before running anything
        assert ev.status == "failed" and ev.failure.error_class


@pytest.mark.parametrize("record", [
    kcl(),
    Prediction(candidate_id="c", property="e", mean=-1.0, std=0.1, model="m"),
    Selection(round=1, policy="ucb", candidate_ids=("a", "b"), scores=(1.0, 0.5), predictions={"a": (0.1, 0.2)}),
    Evaluation(candidate_id="c", fidelity="dft", oracle="gpaw", oracle_fingerprint="f", status="ok",
               energy_per_atom=-3.0, relaxed_structure=kcl().structure,
               provenance=Provenance(code="gpaw", code_version="1", settings_fingerprint="f")),
    FitReport(n_train=3, n_val=1, val_mae=0.1, train_mae=0.05, epochs=(3, 4)),
])
def test_records_round_trip_json_and_are_frozen(record):
    again = type(record).from_json(record.to_json())
    assert again == record
    with pytest.raises(Exception):
        record.round = 5  # frozen
