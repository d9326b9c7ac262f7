"""The cdvae generator on a miniature trained model (no shared data needed): composition-first
formulas it can build are honoured exactly, ones it cannot (more atoms than the model makes) get no
proposals instead of failing the round, and the kind says it takes compositions."""

import numpy as np
from pymatgen.core import Composition

from discovery import registry
from discovery.generators.cdvae.kind import CDVAEGeneratorConfig, build
from discovery.kinds import BuildContext


def test_forced_compositions_are_honoured_or_declined(trained_model):
    assert registry.get_kind("generator", "cdvae").takes_composition
    config = CDVAEGeneratorConfig(checkpoint_dir=trained_model("cdvae"), mode="random")
    gen = build(config, BuildContext(elements=("K", "Rb", "Cl"), max_atoms=8, seed=0))
    rng = np.random.default_rng(0)
    made = gen.propose(3, {"composition": "KCl", "composition_model": "composition_gan"}, rng)
    assert made and all(Composition(c.formula) == Composition("KCl") for c in made)
    assert all(c.conditions["composition"] == "KCl" for c in made)
    assert gen.propose(3, {"composition": "K20Cl20"}, rng) == []
    assert gen.propose(3, {"composition": "K0.5Cl0.5"}, rng) == []
