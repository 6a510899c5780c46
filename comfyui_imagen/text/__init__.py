"""Frozen T5 text encoding: load T5 from what users have (ComfyUI's single files in fp16/bf16/fp8, scaled fp8, Hugging
Face folders such as DeepFloyd IF's ``text_encoder/``), tokenize (SentencePiece folders or bytes) and encode prompts
into `TextEmbeds(embeds [B, L, D], mask [B, L])`.

    from comfyui_imagen.text import load_t5
    t5 = load_t5("models/text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors", tokenizer="comfy/text_encoders/t5_tokenizer")
    cond, uncond = t5.encode_for_guidance(["a red circle to the left of a blue square"])

Importing this package reads no file and imports no transformers (tokenizer loading does, lazily).
"""
from .cleaning import PREPROCESS_MODES, clean_caption, preprocess
from .config import PRESETS, T5_V1_1_LARGE, T5_V1_1_XXL, T5EncoderConfig, expected_shapes, infer_config
from .encoder import (T5_DTYPES, EmbeddingCache, T5TextEncoder, TextEmbeds, cpu_has_fast_bf16, load_t5,
                      pick_compute_dtype)
from .errors import TextEncoderError, TextEncoderWarning
from .fp8 import dequantize, quantize_fp8, to_fp8_state_dict
from .model import T5Encoder
from .tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, find_tokenizer, load_tokenizer, pad_and_truncate

__all__ = ["ByteTokenizer", "EmbeddingCache", "HFTokenizer", "PREPROCESS_MODES", "PRESETS", "T5_DTYPES", "T5Encoder",
           "T5EncoderConfig", "T5TextEncoder", "T5_V1_1_LARGE", "T5_V1_1_XXL", "TextEmbeds", "TextEncoderError",
           "TextEncoderWarning", "Tokenizer", "clean_caption", "cpu_has_fast_bf16", "dequantize", "expected_shapes",
           "find_tokenizer", "infer_config", "load_t5", "load_tokenizer", "pad_and_truncate", "pick_compute_dtype",
           "preprocess", "quantize_fp8", "to_fp8_state_dict"]
