"""LoRA files merged at load, against diffusers' own `load_lora_weights` + `fuse_lora` (PEFT), in the diffusers/PEFT
key layout diffusers saves and in the kohya layout, for the UNet and the text encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from framecast.errors import ModelLoadError
from framecast.models.diffusers_image import load_image_folder
from tests.image_models import save, sd_pipeline

peft = pytest.importorskip("peft")
from diffusers import StableDiffusionPipeline  # noqa: E402

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"]
TEXT_TARGETS = ["q_proj", "v_proj"]


def _adapted(folder: Path, alpha: float) -> tuple[StableDiffusionPipeline, dict[str, torch.Tensor]]:
    """The folder's pipeline with PEFT adapters on its UNet and text encoder (the peer: base + scale B(A(x)),
    unmerged), and the LoRA file's tensors in diffusers' key layout (`unet.<module>.lora_A.weight`, ...)."""
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    tensors: dict[str, torch.Tensor] = {}
    for part, model, targets, seed in (
        ("unet", pipe.unet, UNET_TARGETS, 1),
        ("text_encoder", pipe.text_encoder, TEXT_TARGETS, 2),
    ):
        for key, value in _random_lora(model, targets, seed, alpha).items():
            tensors[f"{part}.{key}"] = value.contiguous()
    return pipe, tensors


def _random_lora(
    model: torch.nn.Module, targets: list[str], seed: int, alpha: float, rank: int = 4
) -> dict[str, torch.Tensor]:
    """PEFT adapters on `model`'s target layers with random weights (both factors nonzero); their state dict."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    inject_adapter_in_model(config, model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return get_peft_model_state_dict(model)


def _unet_out(unet: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 16, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([999, 499]), encoder_hidden_states=text).sample


def _text_out(encoder: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return encoder(torch.tensor([[0, 3, 54, 9, 1, 1]]))[0]


def test_a_diffusers_lora_merged_equals_peft_running_it(tmp_path: Path) -> None:
    """alpha = rank (no alpha keys in the file: scale 1), then strength 0.5 scales the merge."""
    folder = save(sd_pipeline("lcm"), tmp_path / "sd")
    peer, tensors = _adapted(folder, alpha=4.0)
    save_file(tensors, tmp_path / "lora.safetensors")
    plain = load_image_folder(folder)
    parts = load_image_folder(folder, loras=[(tmp_path / "lora.safetensors", 1.0)])
    ours_u, theirs_u, base_u = _unet_out(parts.unet), _unet_out(peer.unet), _unet_out(plain.unet)
    torch.testing.assert_close(ours_u, theirs_u, rtol=1e-4, atol=1e-4 * float(theirs_u.abs().max()))
    assert (ours_u - base_u).abs().max() > 100 * (ours_u - theirs_u).abs().max()  # the LoRA really matters
    torch.testing.assert_close(
        _text_out(parts.prompts.encoders[0][1]), _text_out(peer.text_encoder), rtol=1e-4, atol=1e-5
    )
    half = load_image_folder(folder, loras=[(tmp_path / "lora.safetensors", 0.5)])
    for name, p in half.unet.state_dict().items():  # W + 0.5 dW
        torch.testing.assert_close(
            p, (plain.unet.state_dict()[name] + parts.unet.state_dict()[name]) / 2, rtol=1e-5, atol=1e-6
        )


def test_the_kohya_layout_with_alpha_equals_peft_running_it(tmp_path: Path) -> None:
    """The pairs as kohya saves them (lora_unet_<path with _>.lora_down / lora_up / alpha): alpha 8, rank 4."""
    folder = save(sd_pipeline("lcm"), tmp_path / "sd")
    peer, tensors = _adapted(folder, alpha=8.0)
    kohya: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        part, _, rest = key.partition(".")
        module, _, kind = rest.rpartition(".lora_")
        name = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[part] + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        kohya[f"{name}.alpha"] = torch.tensor(8.0)
    save_file(kohya, tmp_path / "kohya.safetensors")
    parts = load_image_folder(folder, loras=[(tmp_path / "kohya.safetensors", 1.0)])
    theirs = _unet_out(peer.unet)
    torch.testing.assert_close(_unet_out(parts.unet), theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))
    torch.testing.assert_close(
        _text_out(parts.prompts.encoders[0][1]), _text_out(peer.text_encoder), rtol=1e-4, atol=1e-5
    )


def test_bad_lora_files_are_clear(tmp_path: Path) -> None:
    folder = save(sd_pipeline("lcm"), tmp_path / "sd")
    with pytest.raises(ModelLoadError, match="LoRA file not found"):
        load_image_folder(folder, loras=[(tmp_path / "nope.safetensors", 1.0)])
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "none.safetensors")
    with pytest.raises(ModelLoadError, match="no LoRA pairs"):
        load_image_folder(folder, loras=[(tmp_path / "none.safetensors", 1.0)])
    wrong = {"lora_unet_nope.lora_down.weight": torch.zeros(4, 8), "lora_unet_nope.lora_up.weight": torch.zeros(8, 4)}
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(ModelLoadError, match="not a layer with weights in the unet"):
        load_image_folder(folder, loras=[(tmp_path / "wrong.safetensors", 1.0)])
