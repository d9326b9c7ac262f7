"""CD-VAE's encoder: periodic DimeNet++ (``DimeNetPlusPlusWrap``, MODELS.md 4.2) on the CrystalNN graph.

The blocks are torch_geometric's own (``torch_geometric.nn.models.dimenet``: `BesselBasisLayer`,
`SphericalBasisLayer`, `EmbeddingBlock`, `InteractionPPBlock`, `OutputPPBlock`), as CD-VAE uses them
(the spherical basis with its functions evaluated numerically instead of through sympy, see
`NumericSphericalBasisLayer`);
the forward pass is ours: distances and triplet angles are computed with the periodic image
offsets of every edge, triplets come from `discovery.models.cdvae.graphs.triplets` (PyG's
``triplets`` needs torch-sparse), and the readout is the **mean** over atoms.

Sizes (faithful): hidden 128, 4 blocks, int_emb 64, basis_emb 8, out_emb 256, 7 spherical and 6
radial functions, cutoff 7 A, envelope exponent 5, 1 residual layer before the skip and 2 after,
3 output layers, swish (SiLU); the output has ``latent_dim`` channels.

Deviations: triplets keep k = another periodic image of i (CD-VAE drops every k == i; see
`graphs`); the angle is computed in float32 from positions that keep their gradient (CD-VAE
detaches them; the encoder never needs gradients with respect to positions, so nothing changes).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn.models.dimenet import (
    BesselBasisLayer,
    EmbeddingBlock,
    InteractionPPBlock,
    OutputPPBlock,
    SphericalBasisLayer,
)
from torch_geometric.utils import scatter

from discovery.models.cdvae.graphs import edge_vectors, frac_to_cart, triplets

#: Atomic numbers the encoder can embed (PyG's ``EmbeddingBlock`` has ``Embedding(95, .)``).
MAX_ENCODER_Z = 94


def _spherical_bessel(order: int, x: torch.Tensor) -> torch.Tensor:
    """j_order(x) by upward recurrence from sin(x)/x (the same closed forms sympy derives)."""
    j0 = torch.sin(x) / x
    if order == 0:
        return j0
    j1 = torch.sin(x) / x**2 - torch.cos(x) / x
    for n in range(1, order):
        j0, j1 = j1, (2 * n + 1) / x * j1 - j0
    return j1


def _legendre(order: int, c: torch.Tensor) -> torch.Tensor:
    """P_order(c) by Bonnet's recurrence."""
    p0, p1 = torch.ones_like(c), c
    if order == 0:
        return p0
    for n in range(1, order):
        p0, p1 = p1, ((2 * n + 1) * c * p1 - n * p0) / (n + 1)
    return p1


class NumericSphericalBasisLayer(SphericalBasisLayer):
    """PyG's `SphericalBasisLayer` (its ``forward`` is used unchanged) with the basis functions
    evaluated numerically instead of built by sympy.

    PyG builds 42 functions (7 x 6) by simplifying sympy expressions, about 15 s per process on
    this machine (a minute when the machine is busy), which every model load would pay. The same
    functions are: ``bessel_funcs[l * num_radial + n](x) = j_l(z_ln x) / sqrt(j_{l+1}(z_ln)^2 / 2)``
    with z_ln the n-th zero of j_l (PyG's ``Jn_zeros``), and ``sph_funcs[l](theta) =
    sqrt((2l + 1) / 4 pi) P_l(cos theta)``; `tests/unit/test_cdvae_model.py` checks them against
    PyG's own layer.
    """

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float = 5.0, envelope_exponent: int = 5):
        from torch_geometric.nn.models.dimenet import Envelope
        from torch_geometric.nn.models.dimenet_utils import Jn, Jn_zeros

        nn.Module.__init__(self)
        assert num_radial <= 64
        self.num_spherical = num_spherical
        self.num_radial = num_radial
        self.cutoff = cutoff
        self.envelope = Envelope(envelope_exponent)
        zeros = Jn_zeros(num_spherical, num_radial)
        self.sph_funcs = [functools.partial(self._sph, order, math.sqrt((2 * order + 1) / (4 * math.pi)))
                          for order in range(num_spherical)]
        self.bessel_funcs = []
        for order in range(num_spherical):
            for n in range(num_radial):
                z = float(zeros[order, n])
                norm = 1.0 / math.sqrt(0.5 * float(Jn(z, order + 1)) ** 2)
                self.bessel_funcs.append(functools.partial(self._bessel, order, z, norm))

    @staticmethod
    def _sph(order: int, prefactor: float, theta: torch.Tensor) -> torch.Tensor:
        return prefactor * _legendre(order, torch.cos(theta))

    @staticmethod
    def _bessel(order: int, zero: float, norm: float, x: torch.Tensor) -> torch.Tensor:
        return norm * _spherical_bessel(order, zero * x)


@functools.cache
def spherical_basis(num_spherical: int, num_radial: int, cutoff: float, envelope_exponent: int) -> SphericalBasisLayer:
    """The spherical basis, built once per process and shared (it holds no parameters or buffers)."""
    return NumericSphericalBasisLayer(num_spherical, num_radial, cutoff, envelope_exponent)


class DimeNetPPEncoder(nn.Module):
    """Periodic DimeNet++ with mean readout.

    Args:
        out_dim: output channels (CD-VAE: the latent size).
        hidden, num_blocks, int_emb, basis_emb, out_emb, num_spherical, num_radial: DimeNet++ sizes.
        cutoff: basis cutoff. Units: A.
        envelope_exponent, num_before_skip, num_after_skip, num_output_layers: DimeNet++ settings.
    """

    def __init__(self, out_dim: int, hidden: int = 128, num_blocks: int = 4, int_emb: int = 64,
                 basis_emb: int = 8, out_emb: int = 256, num_spherical: int = 7, num_radial: int = 6,
                 cutoff: float = 7.0, envelope_exponent: int = 5, num_before_skip: int = 1,
                 num_after_skip: int = 2, num_output_layers: int = 3):
        super().__init__()
        act = F.silu
        self.cutoff = float(cutoff)
        self.rbf = BesselBasisLayer(num_radial, cutoff, envelope_exponent)
        self.sbf = spherical_basis(num_spherical, num_radial, float(cutoff), envelope_exponent)
        self.emb = EmbeddingBlock(num_radial, hidden, act)
        self.output_blocks = nn.ModuleList([
            OutputPPBlock(num_radial, hidden, out_emb, out_dim, num_output_layers, act)
            for _ in range(num_blocks + 1)])
        self.interaction_blocks = nn.ModuleList([
            InteractionPPBlock(hidden, int_emb, basis_emb, num_spherical, num_radial, num_before_skip,
                               num_after_skip, act) for _ in range(num_blocks)])

    def forward(self, atom_types: torch.Tensor, frac_coords: torch.Tensor, lattice: torch.Tensor,
                num_atoms: torch.Tensor, edge_index: torch.Tensor, images: torch.Tensor,
                num_edges: torch.Tensor) -> torch.Tensor:
        """Encode a batch of crystals.

        Args:
            atom_types: atomic numbers (1..94).
            frac_coords: fractional coordinates.
            lattice: lattice matrices (rows are vectors). Units: A.
            num_atoms: atoms per crystal.
            edge_index: graph edges (source j, target i), images: their image offsets,
                num_edges: edges per crystal (see `discovery.models.cdvae.graphs`).

        Returns:
            The mean over atoms of the output blocks' sum. Shapes: (B, out_dim).

        Shapes: atom_types (N,), frac_coords (N, 3), lattice (B, 3, 3), num_atoms (B,),
        edge_index (2, E), images (E, 3), num_edges (B,).
        """
        n_nodes = atom_types.shape[0]
        pos = frac_to_cart(frac_coords, lattice, num_atoms)
        vec = edge_vectors(pos, lattice, edge_index, images, num_edges)
        dist = vec.norm(dim=-1)
        j, i = edge_index
        _, _, _, idx_kj, idx_ji = triplets(edge_index, images, n_nodes)
        v_ji, v_kj = vec[idx_ji], vec[idx_kj]
        angle = torch.atan2(torch.cross(v_ji, v_kj, dim=1).norm(dim=-1), (v_ji * v_kj).sum(dim=-1))
        rbf = self.rbf(dist)
        sbf = self.sbf(dist, angle, idx_kj)
        x = self.emb(atom_types.long(), rbf, i, j)
        out = self.output_blocks[0](x, rbf, i, num_nodes=n_nodes)
        for interaction, output in zip(self.interaction_blocks, self.output_blocks[1:], strict=True):
            x = interaction(x, rbf, sbf, idx_kj, idx_ji)
            out = out + output(x, rbf, i, num_nodes=n_nodes)
        batch = torch.repeat_interleave(torch.arange(num_atoms.numel(), device=out.device), num_atoms)
        return scatter(out, batch, dim=0, dim_size=num_atoms.numel(), reduce="mean")
