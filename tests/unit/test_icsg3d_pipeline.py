"""ICSG3D pipeline: end-to-end training on tiny perovskites, loading, the three sampling modes,
reconstruction metrics, the campaign generator, bad checkpoints and the train command."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from discovery.errors import ConfigError, DataError
from icsg3d_helpers import TINY, perovskite, tiny_overrides, train_tiny, write_perovskite_csv


class RecordingTracker:
    def __init__(self):
        self.params, self.metrics, self.artifacts = {}, [], []

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step):
        self.metrics.append((dict(metrics), step))

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(Path(path).name)

    def close(self, status="FINISHED"):
        pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("icsg3d")
    tracker, events = RecordingTracker(), []
    t0 = time.perf_counter()
    model, data, structures, config = train_tiny(folder, tracker=tracker, progress=lambda *a: events.append(a))
    return SimpleNamespace(model=model, out=folder / "model", data=data, structures=structures, config=config,
                           tracker=tracker, events=events, wall_s=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- training


def test_training_writes_checkpoints_manifest_and_tracks(trained):
    from discovery.models.icsg3d.model import MANIFEST_NAME

    assert trained.wall_s < 60
    out = trained.out
    for name in ("unet.pt", "vae.pt", "heads.pt", MANIFEST_NAME):
        assert (out / name).is_file()
    assert not list(out.glob(".*.tmp"))
    assert list((out / "cache").glob("voxels-*.npz"))  # featurisation is cached on disk
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    split = manifest["split"]
    assert len(split["train_ids"]) == 10 and len(split["test_ids"]) == 2
    assert not set(split["train_ids"]) & set(split["test_ids"])
    assert set(split["voxel_ids"]) <= set(split["train_ids"])
    assert manifest["properties"] == ["heat_ref", "dir_gap"]  # the formation energy first
    edges = np.quantile(manifest["train_labels"], [0.25, 0.5, 0.75])
    assert np.allclose(manifest["decile_edges"], edges)
    assert manifest["config"]["unet"]["epochs"] == 1 and manifest["config"]["n_deciles"] == 4
    assert {"unet", "vae", "heads", "wall_s"} <= set(manifest["metrics"])
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    # tracker: params, per-epoch curves of every stage, final metrics and the four files
    assert trained.tracker.params["unet.epochs"] == 1 and trained.tracker.params["seed"] == 0
    names = {k for metrics, _ in trained.tracker.metrics for k in metrics}
    assert {"unet/train_loss", "unet/val_loss", "vae/train_mse", "heads/heat_ref/val_mae",
            "heads/dir_gap/train_loss", "wall_s/total"} <= names
    assert sorted(trained.tracker.artifacts) == sorted(["unet.pt", "vae.pt", "heads.pt", MANIFEST_NAME])
    stages = [e[0] for e in trained.events]
    assert [s for i, s in enumerate(stages) if s not in stages[:i]] == ["load", "featurise", "unet", "vae", "heads"]


@pytest.mark.slow
def test_training_is_reproducible_reuses_the_cache_and_can_memory_map(trained, tmp_path, caplog, monkeypatch):
    import torch

    from discovery.models.icsg3d import data as icsg3d_data
    from discovery.models.icsg3d.data import load_training_data
    from discovery.models.icsg3d.train import train_icsg3d

    data = load_training_data(trained.data, trained.config)
    shutil.copytree(trained.out / "cache", tmp_path / "again" / "cache")
    monkeypatch.setattr(icsg3d_data, "MEMMAP_THRESHOLD_BYTES", 0)  # the faithful preset's path
    with caplog.at_level("INFO", logger="discovery"):
        again = train_icsg3d(data, trained.config, tmp_path / "again", seed=0)
    messages = [r.getMessage() for r in caplog.records]
    assert any("voxel cache hit" in m for m in messages) and any("memory-mapped" in m for m in messages)
    assert not list((tmp_path / "again" / "cache").glob("augmented-*"))  # removed after training
    assert again.manifest["split"] == trained.model.manifest["split"]
    assert again.manifest["decile_edges"] == trained.model.manifest["decile_edges"]
    for part in ("unet", "vae"):
        mine, theirs = getattr(again, part).state_dict(), getattr(trained.model, part).state_dict()
        assert all(torch.equal(mine[k].cpu(), theirs[k].cpu()) for k in mine)


# ----------------------------------------------------------------------------- loading and sampling


def test_load_and_sample_in_all_three_modes(trained):
    from discovery.models.icsg3d.model import ICSG3DModel, Samples

    model = ICSG3DModel.load(trained.out)
    assert model.version == trained.model.version and len(model.version) == 12
    latent = trained.config.vae.latent

    def check(samples, n):
        assert isinstance(samples, Samples) and len(samples) == n
        assert samples.valid.dtype == bool and samples.valid.shape == (n,)
        assert samples.z.shape == (n, latent) and samples.lattice_abc.shape == (n, 3)
        assert len(samples.problems) == n
        for s, ok, why in zip(samples.structures, samples.valid, samples.problems):
            assert s is None or isinstance(s, Structure)
            assert (not ok) or (s is not None and why == "")
            assert ok or why

    rand = model.sample_random(6, None, np.random.default_rng(0))
    check(rand, 6)
    assert rand.deciles.tolist() == [0, 1, 2, 3, 0, 1] and (rand.base_index == -1).all()
    again = model.sample_random(6, None, np.random.default_rng(0))
    assert np.array_equal(rand.z, again.z) and np.array_equal(rand.valid, again.valid)
    assert (model.sample_random(3, 2, np.random.default_rng(1)).deciles == 2).all()

    base = trained.structures[0]
    targeted = model.sample_targeted(base, 4, np.random.default_rng(2), scale=0.5, decile=1)
    check(targeted, 4)
    assert (targeted.deciles == 1).all() and (targeted.base_index == 0).all()
    mu, _, _ = model.encode([base], [1])
    assert np.allclose(targeted.z.mean(axis=0), mu[0], atol=1.5)  # z ~ N(mu_base, 0.5^2)

    path = model.interpolate(trained.structures[0], trained.structures[5], 3, deciles=[0, 3])
    check(path, 3)
    assert path.deciles.tolist() == [0, 0, 3] or path.deciles.tolist() == [0, 3, 3]
    mu2, _, _ = model.encode([trained.structures[0], trained.structures[5]], [0, 3])
    assert np.allclose(path.z[0], mu2[0], atol=1e-5) and np.allclose(path.z[-1], mu2[1], atol=1e-5)

    only = model.sample_random(2, 0, np.random.default_rng(3), allowed_species=["Sr", "O"])
    for s in only.structures:
        assert s is None or {e.symbol for e in s.composition.elements} <= {"Sr", "O"}


def test_reconstruction_metrics_and_property_heads(trained):
    from discovery.models.icsg3d.evaluation import evaluate_reconstruction
    from discovery.models.icsg3d.heads import apply_gap_rule

    model = trained.model
    metrics = evaluate_reconstruction(model, trained.structures[:3], [-1.0, -0.8, -0.6])
    assert metrics["n"] == 3 and metrics["n_skipped"] == 0
    for key in ("lattice_mae_a", "lattice_mae_b", "lattice_mae_c", "n_sites_mae", "vae_mse"):
        assert np.isfinite(metrics[key]) and metrics[key] >= 0
    assert 0.0 <= metrics["unet_nonzero_recall"] <= 1.0
    assert 0.0 <= metrics["valid_fraction"] <= metrics["decoded_fraction"] <= 1.0
    pred = model.predict_properties(trained.structures[:4])
    assert set(pred) == {"heat_ref", "dir_gap"} and all(v.shape == (4,) for v in pred.values())
    assert np.isfinite(pred["heat_ref"]).all()
    # the paper's rule: no refractive index or dielectric constant where the gap is zero
    rule = apply_gap_rule({"band_gap": np.array([0.0, 1.5, -0.1]), "refractive_index": np.array([2.0, 2.1, 2.2]),
                           "dielectric_constant": np.array([5.0, 6.0, 7.0]), "heat_ref": np.array([1.0, 2.0, 3.0])})
    assert np.isnan(rule["refractive_index"][[0, 2]]).all() and rule["refractive_index"][1] == 2.1
    assert np.isnan(rule["dielectric_constant"][[0, 2]]).all() and rule["heat_ref"].tolist() == [1.0, 2.0, 3.0]
    cdvae = apply_gap_rule({"dir_gap": np.array([0.0, 1.0]), "ind_gap": np.array([1.0, 2.0]),
                            "refractive_index": np.array([2.0, 2.0])})
    assert np.isnan(cdvae["refractive_index"][0]) and cdvae["refractive_index"][1] == 2.0


def test_heads_transfer_from_the_formation_energy_head(trained):
    import torch

    from discovery.models.icsg3d.heads import PropertyHeads

    heads = trained.model.heads
    assert heads.properties[0] == "heat_ref"
    assert heads.metrics["heat_ref"]["transfer_from"] is None
    assert heads.metrics["dir_gap"]["transfer_from"] == "heat_ref"
    loaded = PropertyHeads.load(trained.out / "heads.pt", trained.config.cgcnn, ["heat_ref", "dir_gap"])
    for a, b in zip(heads.module.state_dict().values(), loaded.module.state_dict().values()):
        assert torch.equal(a.cpu(), b)


# ----------------------------------------------------------------------------- generator


def _generator(trained, **kw):
    from discovery.build import ComponentSpec, build_component
    from discovery.generators.icsg3d import ICSG3DGeneratorConfig

    config = ICSG3DGeneratorConfig(checkpoint_dir=trained.out, n_per_round=3, **kw)
    return build_component(ComponentSpec("generator", config, ("Sr", "Ba", "Ti", "O"), 10, seed=0))


#: What every campaign file must state (`discovery.config.REQUIRED_KEYS`); the default elements.
REQUIRED = {"name": "t", "chemistry": {"elements": ["K", "Rb", "Mg", "Ca", "Cl"]}}


def _campaign_with(tmp_path, **generator):
    import yaml

    from discovery.config import load_config

    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump({**REQUIRED, "generators": [{"kind": "icsg3d", **generator}]}))
    return load_config(path).generators[0]


def test_campaign_file_selects_a_preset_and_checks_the_model_folder_up_front(trained, tmp_path):
    shutil.copy(trained.data, tmp_path / "perov.csv")
    write_perovskite_csv(tmp_path / "other.csv", n=10)
    # relative paths are taken from the campaign file's folder; a matching model is accepted
    gen = _campaign_with(tmp_path, checkpoint_dir=str(trained.out), preset="cpu", train_data="perov.csv",
                         train=tiny_overrides())
    assert gen.train_data == (tmp_path / "perov.csv").resolve() and gen.checkpoint_dir.is_absolute()
    longer_vae = tiny_overrides()
    longer_vae["vae"]["epochs"] = 3
    cases = [
        ({"checkpoint_dir": "empty"}, "generators.0.checkpoint_dir: no trained icsg3d model"),
        ({"checkpoint_dir": str(trained.out), "preset": "faithful"},
         "generators.0.preset: " + str(trained.out) + " holds a 'cpu' model, the campaign asks for 'faithful'"),
        ({"checkpoint_dir": str(trained.out), "train_data": "perov.csv", "train": longer_vae},
         "generators.0.train: " + str(trained.out) + " holds a model trained with vae.epochs=1, the campaign "
         "asks for 3"),
        ({"checkpoint_dir": "new", "train_data": "missing.csv"}, "generators.0.train_data: file not found"),
        ({"checkpoint_dir": "new", "train_data": "perov.csv", "train": {"vae": {"epoch": 3}}},
         "generators.0.train.vae.epoch: unknown key"),
        ({"checkpoint_dir": "new", "train": {"vae": {"epochs": 3}}}, "train and train_seed need train_data"),
        ({"checkpoint_dir": str(trained.out), "train_data": "perov.csv", "train": tiny_overrides(), "train_seed": 1},
         "holds a model trained with train_seed=0, the campaign asks for 1"),
        ({"checkpoint_dir": str(trained.out), "train_data": "other.csv", "train": tiny_overrides()},
         "holds a model trained with train_data sha256="),
    ]
    for generator, message in cases:
        with pytest.raises(ConfigError) as err:
            _campaign_with(tmp_path, **generator)
        assert message in str(err.value) and "\n" not in str(err.value), (generator, str(err.value))
    assert not (tmp_path / "new").exists() and not (tmp_path / "empty").exists()
    # two generators may read one model, but not share a folder that one of them trains into
    import yaml

    from discovery.config import load_config

    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump({**REQUIRED, "generators": [
        {"kind": "icsg3d", "checkpoint_dir": "m", "train_data": "perov.csv"},
        {"kind": "icsg3d", "checkpoint_dir": "./m/", "mode": "random"}]}))
    with pytest.raises(ConfigError, match="generators.1.checkpoint_dir: generators.0 uses the same folder"):
        load_config(two)
    two.write_text(yaml.safe_dump({**REQUIRED, "generators": [
        {"kind": "icsg3d", "checkpoint_dir": str(trained.out)},
        {"kind": "icsg3d", "checkpoint_dir": str(trained.out), "mode": "random"}]}))
    assert len(load_config(two).generators) == 2


def test_campaign_refuses_training_data_it_cannot_train_on_before_writing_anything(trained, tmp_path):
    from discovery.launch import prepare

    shutil.copy(trained.data, tmp_path / "perov.csv")
    gen = _campaign_with(tmp_path, checkpoint_dir="new", train_data="perov.csv",
                         train={**tiny_overrides(), "condition_property": "band_gap"})
    from discovery.config import CampaignConfig

    config = CampaignConfig(generators=[gen], mlip={"enabled": False}, execution={"backend": "local"})
    with pytest.raises(ConfigError, match=r"^generators\.0\.train_data: .*band_gap"):
        prepare(config, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "new").exists()


def test_generator_is_registered_and_follows_the_protocol(trained):
    from discovery.config import validate_config
    from discovery.protocols import Generator
    from discovery.records import Candidate

    gen = _generator(trained)
    assert isinstance(gen, Generator) and gen.name == "icsg3d" and gen.version == trained.model.version
    assert gen.target_decile == 0  # default: the lowest decile
    out = gen.propose(3, {"round": 1}, np.random.default_rng(0))
    assert isinstance(out, list) and len(out) <= 3
    for c in out:
        assert isinstance(c, Candidate) and c.generator == "icsg3d" and c.n_atoms <= 10
    campaign = validate_config({"generators": [{"kind": "icsg3d", "checkpoint_dir": str(trained.out)}]})
    assert campaign.generators[0].mode == "targeted" and campaign.generators[0].latent_scale == 0.5
    with pytest.raises(ConfigError, match="target_decile 7"):
        _generator(trained, target_decile=7)


def test_generator_wraps_valid_decodes_into_candidates(trained, monkeypatch):
    from discovery.models.icsg3d.model import Samples

    gen = _generator(trained)
    chain = Structure(Lattice.cubic(9.0), ["Sr"] * 12, [[x, x, x] for x in np.linspace(0, 0.9, 12)])
    good = [perovskite("Sr", "Ti", 3.9), perovskite("Ba", "Ti", 4.0), perovskite("Sr", "Ti", 3.9), chain]

    def fake_decode(z, cond, allowed_species=None, base_index=None):
        n = len(z)
        structures = [good[i % len(good)] for i in range(n)]
        return Samples(structures=structures, valid=np.ones(n, bool), deciles=cond.argmax(1), z=z,
                       lattice_abc=np.full((n, 3), 4.0),
                       base_index=np.full(n, -1) if base_index is None else np.asarray(base_index),
                       problems=[""] * n)

    monkeypatch.setattr(gen.model, "decode", fake_decode)
    targeted = gen.propose(3, {"round": 2}, np.random.default_rng(0))
    assert len(targeted) == 2  # SrTiO3 twice is one candidate; the 12-site cell exceeds max_atoms
    base_ids = {b["id"] for b in trained.model.manifest["bases"]}
    for c in targeted:
        assert c.conditions["mode"] == "targeted" and c.conditions["round"] == 2
        assert c.conditions["decile"] in range(4)
        assert len(c.parent_ids) == 1 and c.parent_ids[0] in base_ids
        assert c.generator_version == gen.version
    rand = gen.propose(2, {"mode": "random", "decile": 3}, np.random.default_rng(0))
    assert [c.conditions["decile"] for c in rand] == [3, 3] and all(c.parent_ids == () for c in rand)
    assert all(c.conditions["mode"] == "random" for c in rand)


def test_generator_update_recomputes_deciles_and_retargets_to_the_hits(trained):
    from discovery.structures import make_candidate

    gen = _generator(trained, fine_tune_epochs=1)
    train_labels = list(trained.model.manifest["train_labels"])
    cands = [make_candidate(perovskite(a, "Ti", 3.9 + 0.02 * i), "dft") for i, a in enumerate(("Sr", "Ba", "Ca"))]
    labels = [5.0, 6.0, 7.0]  # far above every training label: the top decile after the update
    gen.update({"labels": list(zip(cands, labels)), "property": "band_gap"})  # not the model's condition
    assert np.allclose(gen.decile_edges, trained.model.decile_edges)
    relaxed = make_candidate(perovskite("Pb", "Ti", 4.1), "dft", parent_ids=("proposal-1",))
    gen.update({"labels": [*zip(cands, labels), (relaxed, 0.0)], "round": 1,
                "property": "formation_energy_per_atom"})  # a formation energy, as heat_ref
    assert np.allclose(gen.decile_edges, np.quantile(train_labels + labels + [0.0], [0.25, 0.5, 0.75]))
    assert gen._label("proposal-1") == 0.0  # a label also counts for the proposal it was relaxed from
    assert gen.target_decile == 0 and gen.version == trained.model.version  # no hits yet
    gen.update({"hits": [cands[1].id, cands[2].id], "known": cands})
    assert gen.target_decile == 3  # the decile of the median hit
    bases = gen._bases(gen.target_decile)
    assert [b[0] for b in bases] == [cands[1].id, cands[2].id] and all(b[2] == 3 for b in bases)
    assert gen.version == f"{trained.model.version}-ft1"  # fine-tuned on the two hits
    gen.update({"hits": [cands[1].id]})  # nothing new: no second fine-tune
    assert gen.version.endswith("-ft1")


# ----------------------------------------------------------------------------- bad checkpoints


@pytest.mark.parametrize("damage, file", [
    ("missing", "vae.pt"), ("garbage", "unet.pt"), ("garbage", "heads.pt"), ("swapped", "heads.pt"),
    ("config", "vae.pt"), ("missing", "icsg3d.json"), ("garbage", "icsg3d.json"),
])
def test_bad_checkpoints_give_one_line_data_errors(trained, tmp_path, damage, file):
    from discovery.models.icsg3d.model import ICSG3DModel

    folder = tmp_path / "model"
    shutil.copytree(trained.out, folder, ignore=shutil.ignore_patterns("cache"))
    target = folder / file
    if damage == "missing":
        target.unlink()
    elif damage == "garbage":
        target.write_bytes(b"\x00not a checkpoint\xff" * 10)
    elif damage == "swapped":
        shutil.copy(folder / "unet.pt", target)
    else:  # the manifest asks for another VAE than the file holds
        manifest = json.loads((folder / "icsg3d.json").read_text())
        manifest["config"]["vae"]["latent"] = 5
        (folder / "icsg3d.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError) as err:
        ICSG3DModel.load(folder)
    message = str(err.value)
    assert "\n" not in message and str(target) in message, message


def test_a_checkpoint_from_another_run_is_refused(trained, tmp_path):
    from discovery.models.icsg3d.model import ICSG3DModel
    from discovery.models.icsg3d.training import load_checkpoint, save_checkpoint, vae_architecture

    folder = tmp_path / "model"
    shutil.copytree(trained.out, folder, ignore=shutil.ignore_patterns("cache"))
    payload = load_checkpoint(folder / "vae.pt", "vae", vae_architecture(trained.config))
    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in payload["state"].items()}
    save_checkpoint(folder / "vae.pt", "vae", payload["config"], state, payload["extra"])
    with pytest.raises(DataError, match="sha256") as err:
        ICSG3DModel.load(folder)
    assert "\n" not in str(err.value) and "vae.pt" in str(err.value)


# ----------------------------------------------------------------------------- train command


def _args(**kw):
    base = dict(model="icsg3d", data=Path("missing.csv"), out=Path("out"), preset="cpu", overrides=[],
                device="cpu", max_structures=None, seed=0, tracking_uri=None, no_tracking=True, overwrite=False)
    base.update(kw)
    return argparse.Namespace(**base)


def test_train_command_rejects_bad_input_in_one_line(tmp_path):
    from rich.console import Console

    from discovery.train_cli import cmd_train

    console = Console(file=open(tmp_path / "console.txt", "w"))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n")
    perov = tmp_path / "perov.csv"
    write_perovskite_csv(perov, n=4)
    out = tmp_path / "out"
    cases = [
        (ConfigError, _args(data=tmp_path / "nope.csv", out=out), "nope.csv"),
        (ConfigError, _args(data=perov, out=out, preset="gpu"), "--preset"),
        (ConfigError, _args(data=perov, out=out, overrides=["unet.depth=3"]), "unet.depth"),
        (ConfigError, _args(data=perov, out=out, overrides=["grid"]), "key.path=value"),
        (ConfigError, _args(data=perov, out=out, device="tpu"), "device"),
        (DataError, _args(data=bad_csv, out=out), "cif"),
        (DataError, _args(data=perov, out=out), "formation_energy_per_atom"),  # perov has heat_ref only
    ]
    for error, args, needle in cases:
        with pytest.raises(error) as err:
            cmd_train(args, console)
        assert "\n" not in str(err.value) and needle in str(err.value), str(err.value)
    assert not out.exists()  # nothing is written before the input is validated


def test_train_command_trains_and_reports(tmp_path):
    from rich.console import Console

    from discovery.train_cli import add_train_parser, cmd_train

    parser = argparse.ArgumentParser(prog="discovery")
    add_train_parser(parser.add_subparsers(dest="command"))
    data = tmp_path / "perov.csv"
    write_perovskite_csv(data, n=8)
    argv = ["train", "icsg3d", "--data", str(data), "--out", str(tmp_path / "model"), "--no-tracking",
            "--max-structures", "4"]
    for item in TINY:
        argv += ["--set", item]
    args = parser.parse_args(argv)
    assert args.preset == "cpu" and args.max_structures == 4
    console = Console(file=open(tmp_path / "console.txt", "w"), width=120)
    assert cmd_train(args, console) == 0
    manifest = json.loads((tmp_path / "model" / "icsg3d.json").read_text())
    assert manifest["config"]["max_structures"] == 4 and len(manifest["split"]["voxel_ids"]) == 4
    with pytest.raises(ConfigError, match="--overwrite"):
        cmd_train(args, console)
    console.file.close()
    assert "icsg3d trained" in (tmp_path / "console.txt").read_text()
