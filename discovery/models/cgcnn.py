"""CGCNN regressor (Xie & Grossman, PRL 120, 145301, 2018) on torch_geometric's `CGConv`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.nn import CGConv, global_mean_pool


class CGCNN(nn.Module):
    """Crystal graph convolutional network predicting one scalar per crystal.

    Layers: ``Linear(orig_atom_fea_len -> atom_fea_len)``; ``n_conv`` times
    ``softplus(CGConv(atom_fea_len, dim=edge_fea_len, batch_norm=True))``; mean pooling over the
    atoms of each crystal; ``softplus -> Linear(atom_fea_len -> h_fea_len) -> softplus``
    (``conv_to_fc``, the crystal embedding); ``n_h - 1`` hidden ``Linear + softplus`` layers;
    ``Linear(h_fea_len -> 1)``. Sizes and the order of the softplus calls follow the released code.

    How PyG's `CGConv` differs from the original convolution: with ``z_ij = [x_i, x_j, e_ij]`` the
    original computes ``softplus(x_i + BN2(sum_j sigmoid(f_ij) * softplus(c_ij)))`` with
    ``[f_ij, c_ij] = BN1(W z_ij + b)``; PyG computes ``x_i + BN(sum_j sigmoid(W_f z_ij + b_f) *
    softplus(W_s z_ij + b_s))``, that is, no batch norm on the gated pre-activations (BN1) and no outer
    softplus. This module adds the outer softplus after each convolution; BN1 is left out.

    Args:
        orig_atom_fea_len: length of the input atom features (92 for the CGCNN one-hot vector).
        edge_fea_len: length of the edge features (41 Gaussians for an 8 A cutoff).
        atom_fea_len: hidden atom feature length.
        n_conv: number of graph convolutions.
        h_fea_len: crystal feature length after pooling.
        n_h: number of hidden layers after pooling (``conv_to_fc`` counts as the first).

    Shapes:
        - input: a `torch_geometric.data.Batch` with ``x`` (n_atoms, orig_atom_fea_len),
          ``edge_index`` (2, n_edges), ``edge_attr`` (n_edges, edge_fea_len) and ``batch`` (n_atoms,).
        - `forward` output: (n_crystals,).
        - `embed` output: (n_crystals, h_fea_len).
    """

    def __init__(self, orig_atom_fea_len: int, edge_fea_len: int, atom_fea_len: int = 64,
                 n_conv: int = 3, h_fea_len: int = 128, n_h: int = 1):
        super().__init__()
        if min(orig_atom_fea_len, edge_fea_len, atom_fea_len, n_conv, h_fea_len, n_h) < 1:
            raise ValueError("CGCNN sizes must all be >= 1")
        self.embedding = nn.Linear(orig_atom_fea_len, atom_fea_len)
        self.convs = nn.ModuleList(
            CGConv(atom_fea_len, dim=edge_fea_len, aggr="add", batch_norm=True) for _ in range(n_conv)
        )
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        self.fcs = nn.ModuleList(nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1))
        self.fc_out = nn.Linear(h_fea_len, 1)

    def embed(self, batch: Batch) -> Tensor:
        """Pooled crystal features after ``conv_to_fc`` (used for batch diversity).

        Shapes: (n_crystals, h_fea_len).
        """
        x = self.embedding(batch.x)
        for conv in self.convs:
            x = F.softplus(conv(x, batch.edge_index, batch.edge_attr))
        index = batch.batch if batch.batch is not None else torch.zeros(
            x.shape[0], dtype=torch.long, device=x.device)
        crystal = global_mean_pool(x, index, size=batch.num_graphs)
        return F.softplus(self.conv_to_fc(F.softplus(crystal)))

    def forward(self, batch: Batch) -> Tensor:
        """One prediction per crystal. Shapes: (n_crystals,)."""
        h = self.embed(batch)
        for fc in self.fcs:
            h = F.softplus(fc(h))
        return self.fc_out(h).squeeze(-1)
