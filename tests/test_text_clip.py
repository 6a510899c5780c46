"""A T5 that another runtime holds (`comfyui_imagen.text.hosted`) and Imagen Text Encode (CLIP's T5) over a stand-in of
ComfyUI's CLIP: ``cond_stage_model`` holding ``clip_l`` and ``t5xxl``, whose ``transformer`` is called as
``comfy.text_encoders.t5.T5`` is, ``transformer(ids, mask, dtype=...) -> (hidden, intermediate)``, with Hugging Face
key names (`tests.comfy_helpers.FakeCLIP`). The real ComfyUI CLIP loaders: tests/test_interop_comfyui_server.py."""
from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import nodes
from comfyui_imagen.text import T5Encoder, T5TextEncoder, TextEncoderError, load_t5, load_tokenizer
from comfyui_imagen.text.hosted import HostedT5
from nodes import comfy_clip, text
from tests.comfy_helpers import ClipModel, FakeCLIP, comfy_t5, flux_clip
from tests.tiny_models import write_tiny_t5
from tests.test_files import SHARED_T5

PROMPT, NEGATIVE = "a (red:1.3) circle to the left of a blue square", "blurry"


@pytest.fixture(scope="module")
def t5_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("t5") / "t5xxl_tiny.safetensors"
    write_tiny_t5(path, vocab_size=32128)
    return path


@pytest.fixture(scope="module")
def ours(t5_file):
    return load_t5(t5_file, tokenizer=SHARED_T5, compute_dtype=torch.float32)


def _flux_clip(ours) -> FakeCLIP:
    return flux_clip(ours.config, ours.model.state_dict())


@pytest.fixture(autouse=True)
def comfy_tokenizer(monkeypatch):
    """ComfyUI's bundled tokenizer (the same T5 v1.1 vocabulary): the shared copy."""
    monkeypatch.setattr(comfy_clip.cc, "comfy_t5_tokenizer_dir", lambda: str(SHARED_T5))
    comfy_clip._tokenizer.cache_clear()
    comfy_clip._CACHE.clear()


def test_hosted_t5_encodes_as_the_model_itself(ours):
    state = ours.model.state_dict()
    hosted = HostedT5(lambda ids, mask: ours.model(ids, mask), {k: v.shape for k, v in state.items()},
                      source="a test host")
    assert hosted.config == ours.config and list(hosted.parameters()) == []
    theirs = T5TextEncoder(hosted, load_tokenizer(SHARED_T5))
    for a, b in zip(theirs.encode_for_guidance(PROMPT, NEGATIVE, emphasis=True),
                    ours.encode_for_guidance(PROMPT, NEGATIVE, emphasis=True)):
        assert torch.equal(a.embeds, b.embeds) and torch.equal(a.mask, b.mask)
    with pytest.raises(TextEncoderError, match="a test host is placed by its host"):
        theirs.to("cpu")
    with pytest.raises(TextEncoderError, match="computes in the dtype its host chose"):
        theirs.to(compute_dtype=torch.bfloat16)


def test_hosted_t5_checks_what_the_host_returns(ours):
    shapes = {k: v.shape for k, v in ours.model.state_dict().items()}
    hosted = HostedT5(lambda ids, mask: torch.zeros(1, 3, 5), shapes, source="a test host")
    with pytest.raises(TextEncoderError, match=r"a test host returned hidden states \(1, 3, 5\), expected"):
        T5TextEncoder(hosted, load_tokenizer(SHARED_T5)).encode("a red circle")
    nan = HostedT5(lambda ids, mask: torch.full((*ids.shape, ours.config.d_model), float("nan")), shapes,
                   nan_fix="pick another copy in the host")
    with pytest.raises(TextEncoderError, match="NaN or Inf embeddings: .*; pick another copy in the host$"):
        T5TextEncoder(nan, load_tokenizer(SHARED_T5)).encode("a red circle")
    with pytest.raises(TextEncoderError, match="not a complete T5 encoder"):
        HostedT5(lambda ids, mask: None, {"encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8)})


def test_clip_node_equals_the_t5_loader_node_on_the_same_weights(ours):
    clip = _flux_clip(ours)
    (embeds,) = text.ImagenTextEncodeCLIP().encode(clip, PROMPT, NEGATIVE, 77)
    positive, negative = ours.encode_for_guidance(PROMPT, NEGATIVE, 77, emphasis=True)
    assert torch.equal(embeds.positive.embeds, positive.embeds) and torch.equal(embeds.negative.mask, negative.mask)
    assert torch.equal(embeds.negative.embeds, negative.embeds)
    assert embeds.positive.mask.sum() < 77  # padded with the mask, as IF reads it
    assert clip.loads >= 1  # through ComfyUI's model management


def test_clip_encodings_are_cached_per_clip_and_patch_set(ours):
    clip = _flux_clip(ours)
    t5 = clip.cond_stage_model.t5xxl.transformer
    node = text.ImagenTextEncodeCLIP()
    node.encode(clip, PROMPT, NEGATIVE, 77)
    first = t5.calls
    node.encode(clip, PROMPT, NEGATIVE, 77)
    assert t5.calls == first  # a re-queued workflow costs no T5 pass
    clip.patcher.patches_uuid = uuid.uuid4()  # a CLIP LoRA changed the weights
    node.encode(clip, PROMPT, NEGATIVE, 77)
    assert t5.calls > first


def test_a_clip_that_is_the_t5_itself_is_found(ours):
    clip = FakeCLIP()
    # Load CLIP of a lone t5xxl with a type whose model is the T5 itself
    clip.cond_stage_model = ClipModel(comfy_t5(ours.config, ours.model.state_dict()))
    assert comfy_clip.find_t5(clip)[0] == "t5"
    (embeds,) = text.ImagenTextEncodeCLIP().encode(clip, "a red circle", "", 77)
    assert embeds.positive.embeds.shape == (1, 77, ours.config.d_model)


def test_clip_without_a_t5_or_with_another_vocabulary_is_a_node_error(ours):
    node = text.ImagenTextEncodeCLIP()
    with pytest.raises(ValueError, match=r"^Imagen Text Encode \(CLIP's T5\): the CLIP \(Module: clip_l \(Linear\)\) "
                                         r"holds no T5 encoder; load a T5 v1.1 XXL"):
        node.encode(FakeCLIP(clip_l=ClipModel(nn.Linear(4, 4))), "a red circle", "", 77)
    with pytest.raises(ValueError, match=r"^Imagen Text Encode \(CLIP's T5\): the clip input is a str, not a ComfyUI"):
        node.encode("t5xxl_fp16.safetensors", "a red circle", "", 77)
    umt5 = T5Encoder(ours.config.__class__(**{**ours.config.__dict__, "vocab_size": 256384}), device="meta")
    with pytest.raises(ValueError, match="has 256384 token embeddings, not T5 v1.1's 32128"):
        node.encode(FakeCLIP(umt5xxl=ClipModel(umt5)), "a red circle", "", 77)


def test_the_clip_node_is_registered_after_the_released_ones():
    assert list(nodes.NODE_CLASS_MAPPINGS)[-1] == "ImagenTextEncodeCLIP"
    spec = text.ImagenTextEncodeCLIP.INPUT_TYPES()["required"]
    assert list(spec) == ["clip", "prompt", "negative_prompt", "max_length"]
    assert list(text.ImagenTextEncode.INPUT_TYPES()["required"]) == ["t5", "prompt", "negative_prompt", "max_length"]


def test_gguf_weights_report_their_real_shape(ours):
    """ComfyUI-GGUF keeps packed blocks in the weight (its shape is the bytes') and the real shape as
    ``tensor_shape``; its state_dict copies lose that, so the shapes come from the live tensors."""
    t5 = comfy_t5(ours.config, ours.model.state_dict())
    layer = t5.encoder.block[0].layer[0].SelfAttention.q
    rows, cols = layer.weight.shape
    packed = nn.Parameter(torch.zeros(rows, cols * 17 // 16, dtype=torch.uint8), requires_grad=False)
    packed.tensor_shape = torch.Size((rows, cols))
    layer.weight = packed
    shapes = comfy_clip._shapes(t5)
    assert shapes["encoder.block.0.layer.0.SelfAttention.q.weight"] == (rows, cols)
    assert HostedT5(lambda ids, mask: None, shapes).config == ours.config


def test_clip_hooks_and_original_t5_are_refused(ours):
    node = text.ImagenTextEncodeCLIP()
    clip = _flux_clip(ours)
    clip.patcher.forced_hooks = SimpleNamespace(hooks=["a hook LoRA"])  # what Set CLIP Hooks leaves
    with pytest.raises(ValueError, match=r"carries CLIP hooks .* load the LoRA with LoraLoader"):
        node.encode(clip, "a red circle", "", 77)
    v1_0 = ours.config.__class__(**{**ours.config.__dict__, "gated": False, "activation": "relu"})
    with pytest.raises(ValueError, match=r"is an original T5 \(v1.0"):
        node.encode(FakeCLIP(t5xxl=ClipModel(T5Encoder(v1_0, device="meta"))), "a red circle", "", 77)

