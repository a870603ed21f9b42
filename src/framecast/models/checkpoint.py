"""Save and load the causal DiT as a model folder (config.json + model.safetensors)."""

from __future__ import annotations

from pathlib import Path

from framecast.models.config import DiTConfig
from framecast.models.convert import from_diffusers
from framecast.models.dit import CausalWanDiT
from framecast.models.weights import WEIGHTS_FILE, load_into, read_config, read_weights, save_folder


def save_dit(model: CausalWanDiT, folder: str | Path) -> Path:
    return save_folder(model, model.config.to_dict(), folder)


def load_dit(folder: str | Path) -> CausalWanDiT:
    """Load a DiT folder; weights in diffusers' Wan naming are converted on the way in."""
    cfg = DiTConfig.from_dict(read_config(folder, "DiT"))
    state = read_weights(folder, "DiT")
    if any(k.startswith("condition_embedder.") for k in state):
        state = from_diffusers(state)
    model = CausalWanDiT(cfg)
    load_into(model, state, Path(folder) / WEIGHTS_FILE, "DiT")
    return model.eval()
