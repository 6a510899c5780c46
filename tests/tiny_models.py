"""Tiny random models for the node, workflow and server tests (no ComfyUI needed): stages with the demo cascade's
sizes and file names, tiny T5 files, a DeepFloyd IF folder skeleton and a tiny imagen-pytorch trainer checkpoint."""
from __future__ import annotations

import json

import torch

# Tiny random stages with the demo cascade's sizes (a 64 px base, a 64 -> 256 SR stage) and file names, so that the
# shipped workflows run on them unchanged; ~30 k parameters each, so even a 1024 px SR step is cheap.
TEXT_WIDTH = 32
TINY_T5 = dict(d_model=TEXT_WIDTH, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
DEMO_NAMES = {"t5": "imagen-demo-t5.safetensors", "base": "imagen-demo-base64.safetensors",
              "sr": "imagen-demo-sr256.safetensors"}


def tiny_unet_config(sr: bool):
    from comfyui_imagen.unet.config import UNetConfig

    return UNetConfig(channels=(8, 16), layers=(1, 1), attention=("none", "cross"), mid_attention="cross",
                      lowres_cond=sr, text_embed_dim=TEXT_WIDTH, cond_dim=16, head_dim=8, pool_heads=2,
                      norm_groups=4)


def write_tiny_stage(path, role: str) -> None:
    from comfyui_imagen.checkpoints import StageConfig, save_stage
    from comfyui_imagen.unet import ImagenUNet

    sr = role == "sr"
    config = StageConfig(role=role, resolution=256 if sr else 64, lowres_resolution=64 if sr else None,
                         unet=tiny_unet_config(sr), name=f"tiny-{role}")
    torch.manual_seed(0 if sr else 1)
    save_stage(path, ImagenUNet(config.unet), config)


def write_tiny_t5(path, vocab_size: int = 384) -> None:
    """A tiny random T5 file: byte-level (the demo's vocabulary) by default, SentencePiece-sized with 32128."""
    from safetensors.torch import save_file

    from comfyui_imagen.train.demo_t5 import build_demo_t5

    model = build_demo_t5(vocab_size=vocab_size, seed=0, **TINY_T5)
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))


IMAGEN_PYTORCH_NAME = "imagen.pt"  # the imagen-pytorch template's checkpoint: a trainer file with two U-Nets
TINY_IMAGEN_PYTORCH_UNET = dict(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True),
                                layer_cross_attns=(False, True), attn_heads=2, attn_dim_head=8, max_text_len=16,
                                text_embed_dim=TEXT_WIDTH)
# its SR U-Net as SRUnet256 is made: memory efficient, text cross-attention only at the lowest level
TINY_IMAGEN_PYTORCH_SR = dict(TINY_IMAGEN_PYTORCH_UNET, layer_attns=False, memory_efficient=True, lowres_cond=True)


def write_tiny_imagen_pytorch(path) -> None:
    """A tiny random imagen-pytorch trainer checkpoint as ``ImagenTrainer.save`` writes one (``model`` with the
    Imagen's ``unets.{i}.*`` keys, ``imagen_type`` and ``imagen_params``): a 64 px base and a 64 -> 256 SR U-Net,
    built by our own implementation, whose state dicts are imagen-pytorch's key for key."""
    from comfyui_imagen.unet.imagen_pytorch import ImagenPytorchUNet, ImagenPytorchUNetConfig

    torch.manual_seed(2)
    model, unets = {}, []
    for i in range(2):
        kwargs = TINY_IMAGEN_PYTORCH_SR if i else TINY_IMAGEN_PYTORCH_UNET
        unet = ImagenPytorchUNet(ImagenPytorchUNetConfig.from_kwargs(kwargs))
        with torch.no_grad():  # learned null embeddings and zero-initialised outputs: random, so the image shows
            for p in unet.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        model.update({f"unets.{i}.{k}": v for k, v in unet.state_dict().items()})
        unets.append({k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()})
    params = {"unets": unets, "image_sizes": [64, 256], "timesteps": 1000, "text_embed_dim": TEXT_WIDTH,
              "cond_drop_prob": 0.1, "pred_objectives": "noise", "noise_schedules": "cosine",
              "lowres_sample_noise_level": 0.2}
    torch.save({"model": model, "version": "2.1.0", "steps": torch.tensor([100, 100]), "imagen_type": "original",
                "imagen_params": params}, str(path))


def write_if_folder(root) -> None:
    """A DeepFloyd IF diffusers folder skeleton (configs only): enough for the loaders' listing."""
    (root / "unet").mkdir(parents=True)
    (root / "text_encoder").mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "IFPipeline"}))
    (root / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (root / "text_encoder" / "config.json").write_text(json.dumps({"model_type": "t5"}))
