"""Training configuration of the composition-conditioned crystal GAN, with its two presets.

This module imports no torch (it is read when a campaign file is validated).

**faithful** (MODELS.md 2.2-2.4, the authors' ``train.py`` at ``35cf6d0a``): latent 512; generator
FC 128 x rows, transposed-conv widths 256 / 512 / 256, cell MLP 30; critic widths 512 / 512 / 256,
FC 1000 / 200, 10 outputs (the critic value is their mean); Q-network widths 512 / 256 / 256, count
classifiers 300 / 100; BatchNorm eps 0.8; Adam betas (0.5, 0.999), lr 5e-5 (critic and generator),
2.5e-5 (Q); lr x 0.95 every 10 epochs; batch 32; 501 epochs; generator step every 5th iteration;
WGAN-GP lambda 10; lambda_c = 0.3 on the count classifiers; N = 100 augmented samples per
composition.

**cpu** (2 cores, at most 45 minutes for the whole training of the Mg-Mn-O file): the same losses
(except the double softmax), schedule shape (decay every ``lr_decay_every`` epochs, generator
every 5th iteration), optimiser and latent size; narrower networks, 60 epochs, higher rates. See
`CRYSTAL_GAN_PRESETS` and the measured reasons in the module docstring of
`discovery.models.crystal_gan.training`.

Element blocks (beyond the paper): the rows of the matrix are grouped into blocks, one per *role*
(cation A, cation B, anion X) with a training element and a maximum count (Mg 8, Mn 8, O 12 in
the paper). A model trained on Mg-Mn-O therefore proposes A-B-X structures, and the generator can
put other elements on the roles at decode time (substitution, recorded in each candidate).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from discovery.configbase import Strict, with_preset

#: The paper's blocks: Mg (8 rows), Mn (8 rows), O (12 rows).
DEFAULT_BLOCKS: tuple[dict[str, Any], ...] = (
    {"role": "A", "element": "Mg", "max_count": 8, "sign": "cation"},
    {"role": "B", "element": "Mn", "max_count": 8, "sign": "cation"},
    {"role": "X", "element": "O", "max_count": 12, "sign": "anion"},
)
#: The composition the authors' ``make_comp_testset.py`` holds out (as A6 B3 X11 counts).
PAPER_TEST_COMPOSITION = "Mg6Mn3O11"


class ElementBlock(Strict):
    """One block of rows of the representation: a role, its training element and its row count."""

    role: str = Field(..., min_length=1, max_length=8, description="role label (A, B, X)")
    element: str = Field(..., min_length=1, max_length=3, description="element of this role in the training data")
    max_count: int = Field(..., ge=1, le=64, description="rows of this block (most atoms of the role)")
    sign: Literal["cation", "anion"] = "cation"

    @field_validator("element")
    @classmethod
    def _element(cls, v: str) -> str:
        from pymatgen.core import Element

        if not Element.is_valid_symbol(v):
            raise ValueError(f"unknown element {v!r}")
        return v


CRYSTAL_GAN_PRESETS: dict[str, dict[str, Any]] = {
    "faithful": {
        "samples_per_composition": 100,
        "latent_dim": 512,
        "g_fc": 128,
        "g_channels": (256, 512, 256),
        "g_cell_hidden": 30,
        "d_channels": (512, 512, 256),
        "d_fc": (1000, 200),
        "q_channels": (512, 256, 256),
        "q_fc": (300, 100),
        "lr_d": 5e-5,
        "lr_g": 5e-5,
        "lr_q": 2.5e-5,
        "lr_decay_every": 10,
        "batch_size": 32,
        "epochs": 501,
        "double_softmax": True,
    },
    "cpu": {
        "samples_per_composition": 100,
        "latent_dim": 512,
        "g_fc": 64,
        "g_channels": (128, 256, 128),
        "g_cell_hidden": 30,
        "d_channels": (128, 128, 64),
        "d_fc": (256, 64),
        "q_channels": (128, 64, 64),
        "q_fc": (128, 64),
        "lr_d": 2e-4,
        "lr_g": 1e-3,
        "lr_q": 1e-4,
        "lr_decay_every": 3,
        "batch_size": 32,
        "epochs": 60,
        "double_softmax": False,
    },
}


class CrystalGANConfig(Strict):
    """Sizes, losses and schedule of the crystal GAN (`discovery.models.crystal_gan`).

    Keys the user leaves out come from ``preset``. ``holdout``: compositions (formulas of the
    cell contents, e.g. ``Mg6Mn3O11``; not reduced) removed from training; None means the default
    rule: the paper's test composition plus ``holdout_extra`` compositions drawn with
    ``holdout_seed`` among those with 2 to 10 known structures and at most 20 atoms.
    """

    preset: Literal["cpu", "faithful"] = "cpu"
    blocks: tuple[ElementBlock, ...] = Field(
        default_factory=lambda: tuple(ElementBlock(**b) for b in DEFAULT_BLOCKS), min_length=1)
    samples_per_composition: int = Field(..., ge=1, description="augmented samples per composition (N)")
    holdout: tuple[str, ...] | None = Field(None, description="compositions held out of training")
    holdout_extra: int = Field(4, ge=0)
    holdout_seed: int = Field(0, ge=0)
    latent_dim: int = Field(..., ge=1)
    g_fc: int = Field(..., ge=1, description="generator FC channels per row")
    g_channels: tuple[int, int, int] = Field(..., description="generator transposed-conv widths")
    g_cell_hidden: int = Field(..., ge=1)
    d_channels: tuple[int, int, int] = Field(..., description="critic conv widths")
    d_fc: tuple[int, int] = Field(..., description="critic feature layers")
    d_outputs: int = Field(10, ge=1, description="critic outputs (the critic value is their mean)")
    q_channels: tuple[int, int, int] = Field(..., description="Q-network conv widths per element branch")
    q_fc: tuple[int, int] = Field(..., description="count classifier hidden layers")
    bn_eps: float = Field(0.8, gt=0, description="BatchNorm eps (0.8: the original's quirk)")
    double_softmax: bool = Field(
        ..., description="cross entropy on the Q heads' softmax outputs, as the original does")
    noise_padding: bool = Field(True, description="noise the padding of real images for the Q-network")
    q_learns_fakes: bool = Field(
        True, description="the Q optimiser also steps on the fakes' count loss in the generator step (original)")
    lr_d: float = Field(..., gt=0)
    lr_g: float = Field(..., gt=0)
    lr_q: float = Field(..., gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    lr_decay: float = Field(0.95, gt=0, le=1)
    lr_decay_every: int = Field(..., ge=1, description="epochs between lr decays")
    batch_size: int = Field(..., ge=2)
    epochs: int = Field(..., ge=1)
    n_critic: int = Field(5, ge=1, description="a generator step every n_critic-th iteration")
    gp_lambda: float = Field(10.0, ge=0)
    lambda_count: float = Field(0.3, ge=0, description="lambda_c, weight of the count classifiers")
    lambda_row: float = Field(1.0, ge=0, description="weight of the per-row occupancy loss on real images")
    row_threshold: float = Field(0.4, gt=0, description="a row is an atom when its sum exceeds this")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return with_preset(data, CRYSTAL_GAN_PRESETS)

    @model_validator(mode="after")
    def _blocks(self) -> CrystalGANConfig:
        roles = [b.role for b in self.blocks]
        elements = [b.element for b in self.blocks]
        if len(set(roles)) != len(roles) or len(set(elements)) != len(elements):
            raise ValueError("blocks need distinct roles and distinct elements")
        return self

    @property
    def n_rows(self) -> int:
        """Rows of the matrix: 2 cell rows plus every block's rows (30 for the paper)."""
        return 2 + sum(b.max_count for b in self.blocks)
