"""Config and registry entry of the CGCNN ensemble surrogate (`discovery.surrogates.cgcnn_ensemble`).

Kept apart from the implementation so that reading a campaign file never imports torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from discovery.configbase import Strict, with_preset
from discovery.kinds import Kind

CGCNN_PRESETS: dict[str, dict[str, Any]] = {
    # Xie & Grossman, PRL 120, 145301 (2018), defaults of the released code.
    "faithful": dict(atom_fea_len=64, h_fea_len=128, n_conv=3, n_h=1, lr=0.01, batch_size=256,
                     max_epochs=30, weight_decay=0.0, patience=30),
    # Same architecture family, losses and early-stopping schedule, sized for 2 cores.
    "cpu": dict(atom_fea_len=32, h_fea_len=64, n_conv=2, n_h=1, lr=0.005, batch_size=16,
                max_epochs=300, weight_decay=0.0, patience=40),
}


class CGCNNEnsembleConfig(Strict):
    """An ensemble of CGCNN regressors (torch_geometric CGConv) predicting formation energy."""

    kind: Literal["cgcnn_ensemble"] = "cgcnn_ensemble"
    preset: Literal["cpu", "faithful"] = "cpu"
    property: Literal["formation_energy_per_atom"] = "formation_energy_per_atom"
    ensemble_size: int = Field(5, ge=1)
    atom_fea_len: int = Field(..., ge=1)
    h_fea_len: int = Field(..., ge=1)
    n_conv: int = Field(..., ge=1)
    n_h: int = Field(..., ge=1)
    lr: float = Field(..., gt=0)
    batch_size: int = Field(..., ge=1)
    max_epochs: int = Field(..., ge=1)
    weight_decay: float = Field(..., ge=0)
    patience: int = Field(..., ge=1)
    val_fraction: float = Field(0.2, ge=0.0, lt=0.9)
    cutoff_a: float = Field(8.0, gt=0)
    max_neighbors: int = Field(12, ge=1)
    bootstrap: bool = True
    recalibrate: bool = Field(
        True, description="scale the ensemble std to fit the validation split (needs >= 5 labels)")
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="where members train and predict; not part of the checkpoint identity")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return with_preset(data, CGCNN_PRESETS)


KIND = Kind(role="surrogate", name="cgcnn_ensemble", config=CGCNNEnsembleConfig,
            factory="discovery.surrogates.cgcnn_ensemble:build", checkpoints=True,
            summary="ensemble of CGCNN regressors (torch_geometric CGConv), recalibrated spread")
