"""`ImagenPytorchUNetConfig`: the shape of lucidrains' imagen-pytorch 2.x ``Unet``, as one frozen dataclass.

The fields are ``Unet.__init__``'s arguments that change its structure or forward pass, normalised (per-level values
are tuples with one entry per level; ``cond_dim``, ``init_dim`` and ``channels_out`` resolved), so that a config read
from the constructor arguments (`ImagenPytorchUNetConfig.from_kwargs`) and one read from the tensor shapes alone
(`ImagenPytorchUNetConfig.from_shapes`) compare equal. Values the network does not use are stored as imagen-pytorch's
defaults (`_canonical`): ``ff_mult`` without level attention, ``attn_pool_num_latents`` without attention pooling...

The module is `comfyui_imagen.unet.imagen_pytorch.ImagenPytorchUNet`.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, Sequence, Union

from .config import dataclass_from_dict

# T5-v1.1-base's width: ``Unet(text_embed_dim = get_encoded_dim(DEFAULT_T5_NAME))``
DEFAULT_TEXT_EMBED_DIM = 768
PER_LEVEL = ("num_resnet_blocks", "layer_attns", "layer_attns_depth", "layer_cross_attns", "use_linear_attn",
             "use_linear_cross_attn")
BOOL_LEVELS = frozenset({"layer_attns", "layer_cross_attns", "use_linear_attn", "use_linear_cross_attn"})
# ``Unet.__init__``'s defaults for the arguments it shares with the config (``dim`` has none: it is required)
UNET_DEFAULTS: dict[str, Any] = dict(
    dim_mults=(1, 2, 4, 8), num_resnet_blocks=1, text_embed_dim=DEFAULT_TEXT_EMBED_DIM, cond_dim=None,
    num_time_tokens=2, learned_sinu_pos_emb_dim=16, channels=3, channels_out=None, attn_dim_head=64, attn_heads=8,
    ff_mult=2.0, lowres_cond=False, layer_attns=True, layer_attns_depth=1, layer_mid_attns_depth=1,
    attend_at_middle=True, layer_cross_attns=True, use_linear_attn=False, use_linear_cross_attn=False,
    cond_on_text=True, max_text_len=256, init_dim=None, init_conv_kernel_size=7, init_cross_embed=True,
    init_cross_embed_kernel_sizes=(3, 7, 15), attn_pool_text=True, attn_pool_num_latents=32, memory_efficient=False,
    init_conv_to_final_conv_residual=False, use_global_context_attn=True, scale_skip_connection=True,
    final_resnet_block=True, final_conv_kernel_size=3, combine_upsample_fmaps=False, pixel_shuffle_upsample=True)
# arguments ``Unet.forward`` never reads for images (or that only matter with an unsupported flag)
IGNORED_KWARGS = frozenset({"num_image_tokens", "out_dim", "dropout", "layer_attns_add_text_cond", "resize_mode",
                            "cross_embed_downsample_kernel_sizes"})
# PerceiverResampler(max_seq_len = 512): its position embedding's length
PERCEIVER_MAX_SEQ_LEN = 512


@dataclass(frozen=True)
class ImagenPytorchUNetConfig:
    """imagen-pytorch's ``Unet`` arguments, under their own names (see its ``__init__``).

    Per-level tuples run from the highest resolution (level 0) down; ``None`` (or a single value) gives every level
    the same value, as imagen-pytorch's ``cast_tuple`` does. ``cond_dim`` / ``init_dim`` None: ``dim``;
    ``channels_out`` None: ``channels`` (resolved on construction). Level ``i`` works at ``dim * dim_mults[i]``
    channels (memory-efficient) or at the previous level's (otherwise; ``init_dim`` above level 0).
    A level's self-attention is a transformer (``layer_attns``) or a linear-attention transformer
    (``use_linear_attn``), ``layer_attns_depth`` blocks deep; its first residual block cross-attends to the
    conditioning tokens when ``layer_cross_attns`` or ``use_linear_cross_attn`` (the latter: linear attention).
    """

    architecture: Literal["imagen-pytorch"] = "imagen-pytorch"
    dim: int = 128
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    num_resnet_blocks: Optional[tuple[int, ...]] = None
    text_embed_dim: int = DEFAULT_TEXT_EMBED_DIM
    cond_dim: Optional[int] = None
    num_time_tokens: int = 2
    learned_sinu_pos_emb_dim: int = 16
    channels: int = 3
    channels_out: Optional[int] = None
    attn_dim_head: int = 64
    attn_heads: int = 8
    ff_mult: float = 2.0
    lowres_cond: bool = False
    layer_attns: Optional[tuple[bool, ...]] = None
    layer_attns_depth: Optional[tuple[int, ...]] = None
    layer_mid_attns_depth: int = 1
    attend_at_middle: bool = True
    layer_cross_attns: Optional[tuple[bool, ...]] = None
    use_linear_attn: Optional[tuple[bool, ...]] = None
    use_linear_cross_attn: Optional[tuple[bool, ...]] = None
    cond_on_text: bool = True
    max_text_len: int = 256
    init_dim: Optional[int] = None
    init_conv_kernel_size: int = 7
    init_cross_embed: bool = True
    init_cross_embed_kernel_sizes: tuple[int, ...] = (3, 7, 15)
    attn_pool_text: bool = True
    attn_pool_num_latents: int = 32
    memory_efficient: bool = False
    init_conv_to_final_conv_residual: bool = False
    use_global_context_attn: bool = True
    scale_skip_connection: bool = True
    final_resnet_block: bool = True
    final_conv_kernel_size: int = 3
    combine_upsample_fmaps: bool = False
    pixel_shuffle_upsample: bool = True

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        if self.architecture != "imagen-pytorch":
            raise ValueError(f"ImagenPytorchUNetConfig.architecture is {self.architecture!r}; expected "
                             f"'imagen-pytorch' (a UNetConfig describes the other U-Net)")
        mults = tuple(self.dim_mults) if isinstance(self.dim_mults, (list, tuple)) else (self.dim_mults,)
        if not mults or not all(_is_int(m) and m > 0 for m in mults):
            raise ValueError(f"ImagenPytorchUNetConfig.dim_mults {self.dim_mults!r}: give one positive integer per "
                             f"level")
        put("dim_mults", tuple(int(m) for m in mults))
        n = len(mults)
        for name in PER_LEVEL:
            value = getattr(self, name)
            value = UNET_DEFAULTS[name] if value is None else value
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
            if len(value) != n:
                raise ValueError(f"ImagenPytorchUNetConfig.{name} has {len(value)} entries; give one per level of "
                                 f"dim_mults ({n}) or a single value")
            put(name, tuple(bool(v) for v in value) if name in BOOL_LEVELS else value)
        for name, fallback in (("cond_dim", "dim"), ("init_dim", "dim"), ("channels_out", "channels")):
            if getattr(self, name) is None:
                put(name, getattr(self, fallback))
        kernels = self.init_cross_embed_kernel_sizes
        put("init_cross_embed_kernel_sizes", tuple(sorted(kernels if isinstance(kernels, (list, tuple))
                                                          else (kernels,))))
        if _is_int(self.ff_mult) or isinstance(self.ff_mult, float):
            put("ff_mult", float(self.ff_mult))
        _validate(self)
        _canonical(self)

    # ---------------------------------------------------------------------------------------- the library's view
    @property
    def in_channels(self) -> int:
        """Channels of the noisy image (an SR U-Net also takes a low-resolution image of as many)."""
        return self.channels

    @property
    def out_channels(self) -> int:
        return self.channels_out

    @property
    def levels(self) -> int:
        return len(self.dim_mults)

    @property
    def downscale(self) -> int:
        """Height and width must be multiples of this: the memory-efficient layout downsamples before every level,
        the other after every level but the last."""
        return 2 ** (self.levels if self.memory_efficient else self.levels - 1)

    @property
    def time_cond_dim(self) -> int:
        """Width of the time conditioning: ``dim * 4 * (2 if lowres_cond else 1)``."""
        return self.dim * 4 * (2 if self.lowres_cond else 1)

    @property
    def dims(self) -> tuple[int, ...]:
        """``[init_dim, *map(lambda m: dim * m, dim_mults)]``: level ``i`` goes from ``dims[i]`` to ``dims[i + 1]``."""
        return (self.init_dim, *(self.dim * m for m in self.dim_mults))

    @property
    def feature_levels(self) -> tuple[tuple[int, bool, float], ...]:
        """(channels, whether it attends, its share of the image's pixels) per level: what memory estimates read.
        The memory-efficient layout runs level i at half level i's usual resolution (it downsamples first)."""
        shift = 1 if self.memory_efficient else 0
        return tuple((d, bool(a or lin or c or lc), 4.0 ** -(i + shift)) for i, (d, a, lin, c, lc) in enumerate(
            zip(self.dims[1:], self.layer_attns, self.use_linear_attn, self.layer_cross_attns,
                self.use_linear_cross_attn)))

    def replace(self, **changes) -> "ImagenPytorchUNetConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field, JSON-ready (tuples as lists), ``architecture`` included."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "ImagenPytorchUNetConfig":
        return dataclass_from_dict(cls, dict(data))

    # ------------------------------------------------------------------------------------------ readers
    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> "ImagenPytorchUNetConfig":
        """The config of ``Unet(**kwargs)``: a ``Unet.persist_to_file`` file's ``config`` (the U-Net's ``_locals``)
        or one entry of a trainer checkpoint's ``imagen_params["unets"]`` (pydantic ``UnetConfig.dict()``, which
        carries its own ``attn_dim_head`` / ``attn_heads`` defaults, 32 / 16). Absent arguments take ``Unet``'s
        defaults; arguments its forward pass never reads for images are accepted and ignored."""
        kwargs = dict(kwargs)
        known = set(UNET_DEFAULTS) | IGNORED_KWARGS | {"dim", "self_cond", "cond_images_channels",
                                                        "cross_embed_downsample"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown imagen-pytorch Unet arguments {unknown}: not a Unet of imagen-pytorch 2.x "
                             f"(a Unet3D / video U-Net is not supported); expected some of {sorted(known)}")
        if "dim" not in kwargs:
            raise ValueError("the imagen-pytorch Unet arguments have no 'dim' (the base width), which Unet requires")
        if kwargs.get("self_cond"):
            raise ValueError("self_cond=True is not supported: a self-conditioned Unet takes the previous step's x0 "
                             "prediction as input, which the samplers do not feed back")
        if kwargs.get("cond_images_channels") or 0:
            raise ValueError(f"cond_images_channels={kwargs['cond_images_channels']} is not supported: image "
                             f"conditioning (cond_images) has no input here")
        if kwargs.get("cross_embed_downsample"):
            raise ValueError("cross_embed_downsample=True is not supported: imagen-pytorch 2.1.0 cannot build it "
                             "either (CrossEmbedLayer gets its output width as the kernel sizes: a TypeError)")
        fields = {name: kwargs.get(name, default) for name, default in UNET_DEFAULTS.items()}
        return cls(dim=kwargs["dim"], **fields)

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]], *, scale_skip_connection: bool = True,
                    use_linear_cross_attn: Union[bool, Sequence[bool]] = False) -> "ImagenPytorchUNetConfig":
        """The config of the U-Net whose state dict has these key -> shape pairs (the ``Unet``'s own keys, no
        prefix). Two things are not in the weights and come from the arguments: ``scale_skip_connection`` and
        ``use_linear_cross_attn`` (a ``LinearCrossAttention`` has exactly a ``CrossAttention``'s parameters; given
        per level, or one value for every level that cross-attends). When nothing but linear attention uses the
        heads, their count cannot be told from their width either: 8 (``Unet``'s default) is assumed.
        ValueError naming the key when the shapes are not an imagen-pytorch 2.x U-Net."""
        s = {k: tuple(v) for k, v in shapes.items()}
        _reject_other_formats(s)

        def shape(key: str) -> tuple[int, ...]:
            if key not in s:
                raise ValueError(f"no {key!r} in the weights: not an imagen-pytorch 2.x Unet state dict")
            return s[key]

        def count(prefix: str) -> int:
            found = {int(m.group(1)) for k in s if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
            return max(found) + 1 if found else 0

        lowres = any(k.startswith("to_lowres_time_hiddens.") for k in s)
        time_cond_dim = shape("to_time_cond.0.weight")[0]
        dim, rest = divmod(time_cond_dim, 4 * (2 if lowres else 1))
        if rest:
            raise ValueError(f"to_time_cond.0.weight {s['to_time_cond.0.weight']}: not 4 (8 for an SR U-Net) times "
                             f"the base width; not an imagen-pytorch 2.x Unet")
        cond_dim = shape("norm_cond.weight")[0]
        kw: dict[str, Any] = dict(dim=dim, cond_dim=cond_dim, lowres_cond=lowres,
                                  scale_skip_connection=bool(scale_skip_connection),
                                  learned_sinu_pos_emb_dim=2 * shape("to_time_hiddens.0.weights")[0],
                                  num_time_tokens=shape("to_time_tokens.0.weight")[0] // cond_dim,
                                  max_text_len=shape("null_text_embed")[1],
                                  cond_on_text="text_to_cond.weight" in s,
                                  memory_efficient=any(k.startswith("init_resnet_block.") for k in s))
        if kw["cond_on_text"]:
            kw["text_embed_dim"] = s["text_to_cond.weight"][1]
        if "init_conv.weight" in s:
            init = s["init_conv.weight"]
            kw.update(init_cross_embed=False, init_conv_kernel_size=init[-1], init_dim=init[0])
        else:
            convs = [shape(f"init_conv.convs.{j}.weight") for j in range(max(count("init_conv.convs."), 1))]
            init = convs[0]
            kw.update(init_cross_embed=True, init_cross_embed_kernel_sizes=tuple(c[-1] for c in convs),
                     init_dim=sum(c[0] for c in convs))
        kw["channels"] = init[1] // (2 if lowres else 1)
        final = shape("final_conv.weight")
        kw.update(channels_out=final[0], final_conv_kernel_size=final[-1])
        if kw["channels_out"] != kw["channels"]:  # an Imagen makes every U-Net channels_out = channels
            raise ValueError(f"init_conv takes {init[1]} channels and final_conv gives {final[0]}: a U-Net conditioned "
                             f"on more than the image (self_cond=True, or cond_images_channels), which is not "
                             f"supported: the samplers feed it the noisy image (and an SR stage's low-res image) "
                             f"only")

        n = count("downs.")
        if n == 0 or count("ups.") != n:
            raise ValueError(f"the weights have {n} down and {count('ups.')} up levels ('downs.*', 'ups.*'): not an "
                             f"imagen-pytorch 2.x Unet")
        widths = [shape(f"ups.{n - 1 - i}.0.block1.project.weight")[0] for i in range(n)]
        if any(w % dim for w in widths):
            raise ValueError(f"level widths {widths} are not multiples of the base width {dim}: not an "
                             f"imagen-pytorch 2.x Unet")
        kw["dim_mults"] = tuple(w // dim for w in widths)
        dims = (kw["init_dim"], *widths)
        level_dims = dims[1:] if kw["memory_efficient"] else dims[:-1]
        attns, linear, depths, ff_mults = [], [], [], []
        for i in range(n):
            p = f"downs.{i}.3.layers."
            attns.append(f"{p}0.0.to_q.weight" in s)
            linear.append(f"{p}0.0.to_q.1.weight" in s)
            depths.append(count(p) or 1)
            if attns[-1] or linear[-1]:
                ff_mults.append(shape(f"{p}0.1.1.weight")[0] / level_dims[i])
        cross = [f"downs.{i}.1.cross_attn.to_q.weight" in s for i in range(n)]
        lin_cross = use_linear_cross_attn if isinstance(use_linear_cross_attn, (list, tuple)) else \
            (bool(use_linear_cross_attn),) * n
        if len(lin_cross) != n:
            raise ValueError(f"use_linear_cross_attn has {len(lin_cross)} entries; the weights have {n} levels")
        kw.update(num_resnet_blocks=tuple(count(f"downs.{i}.2.") for i in range(n)), layer_attns=tuple(attns),
                 use_linear_attn=tuple(linear), layer_attns_depth=tuple(depths),
                 layer_cross_attns=tuple(c and not lc for c, lc in zip(cross, lin_cross)),
                 use_linear_cross_attn=tuple(c and bool(lc) for c, lc in zip(cross, lin_cross)))
        if ff_mults:
            kw["ff_mult"] = ff_mults[0]
        kw["attn_heads"], kw["attn_dim_head"] = _heads(s, n, attns, linear, cross)
        kw["attend_at_middle"] = "mid_attn.layers.0.0.to_q.weight" in s
        kw["layer_mid_attns_depth"] = count("mid_attn.layers.") or 1
        kw["attn_pool_text"] = "attn_pool.latents" in s
        if kw["attn_pool_text"]:
            kw["attn_pool_num_latents"] = s["attn_pool.latents"][0]
        blocks = [k for k in s if re.match(r"downs\.\d+\.2\.\d+\.block1\.", k) or k.startswith("init_resnet_block.")]
        kw["use_global_context_attn"] = not blocks or any(
            re.match(r"(downs\.\d+\.2\.\d+|init_resnet_block)\.gca\.", k) for k in s)
        kw["pixel_shuffle_upsample"] = not any(re.match(r"ups\.\d+\.3\.1\.weight$", k) for k in s)
        kw["combine_upsample_fmaps"] = any(k.startswith("upsample_combiner.fmap_convs.") for k in s)
        kw["final_resnet_block"] = "final_res_block.block1.project.weight" in s
        combined = dim * (1 + n) if kw["combine_upsample_fmaps"] else dim
        final_in = s["final_res_block.block1.project.weight"][1] if kw["final_resnet_block"] else \
            final[1] - (kw["channels"] if lowres else 0)
        kw["init_conv_to_final_conv_residual"] = final_in == combined + dim
        config = cls(**kw)
        _check_shapes(config, s)
        return config


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()


def _validate(c: ImagenPytorchUNetConfig) -> None:
    """ValueError naming the field when `c` cannot build imagen-pytorch's Unet (or would change the image size)."""
    positive = ["dim", "cond_dim", "init_dim", "channels", "channels_out", "attn_dim_head", "attn_heads",
                "max_text_len", "num_time_tokens", "learned_sinu_pos_emb_dim", "text_embed_dim",
                "attn_pool_num_latents", "layer_mid_attns_depth", "init_conv_kernel_size", "final_conv_kernel_size"]
    for name in positive:
        if not (_is_int(v := getattr(c, name)) and v > 0):
            raise ValueError(f"ImagenPytorchUNetConfig.{name} must be a positive integer, got {v!r}")
        object.__setattr__(c, name, int(v))
    for name, low in (("num_resnet_blocks", 0), ("layer_attns_depth", 1)):
        values = getattr(c, name)
        if not all(_is_int(v) and v >= low for v in values):
            raise ValueError(f"ImagenPytorchUNetConfig.{name} {values}: every level needs an integer >= {low}")
        object.__setattr__(c, name, tuple(int(v) for v in values))
    if not isinstance(c.ff_mult, float) or c.ff_mult <= 0:
        raise ValueError(f"ImagenPytorchUNetConfig.ff_mult must be a positive number, got {c.ff_mult!r}")
    if c.learned_sinu_pos_emb_dim % 2:
        raise ValueError(f"ImagenPytorchUNetConfig.learned_sinu_pos_emb_dim {c.learned_sinu_pos_emb_dim} must be "
                         f"even (half sines, half cosines)")
    kernels = c.init_cross_embed_kernel_sizes
    odd = {"init_conv_kernel_size": (c.init_conv_kernel_size,), "final_conv_kernel_size": (c.final_conv_kernel_size,),
           "init_cross_embed_kernel_sizes": kernels}
    for name, values in odd.items():
        if not values or not all(_is_int(k) and k > 0 and k % 2 for k in values):
            raise ValueError(f"ImagenPytorchUNetConfig.{name} {values}: kernel sizes must be odd (padding k // 2 "
                             f"keeps the image size only for odd k)")
    if c.init_cross_embed:
        scales = [int(c.init_dim / 2 ** i) for i in range(1, len(kernels))]
        if min([*scales, c.init_dim - sum(scales)]) < 1:
            raise ValueError(f"ImagenPytorchUNetConfig.init_dim {c.init_dim} is too narrow for "
                             f"{len(kernels)} cross-embed kernels (each takes half of what is left)")
    if c.attn_pool_text and c.max_text_len > PERCEIVER_MAX_SEQ_LEN:
        raise ValueError(f"ImagenPytorchUNetConfig.max_text_len {c.max_text_len}: the attention pooling's position "
                         f"embedding has {PERCEIVER_MAX_SEQ_LEN} positions (lower it or set attn_pool_text=False)")


def _canonical(c: ImagenPytorchUNetConfig) -> None:
    """One spelling per network: values the network does not use become imagen-pytorch's defaults, so that the
    config read from a file's arguments equals the one read from its tensor shapes."""
    def put(name, value):
        object.__setattr__(c, name, value)

    n = c.levels
    put("use_linear_attn", tuple(lin and not full for lin, full in zip(c.use_linear_attn, c.layer_attns)))
    put("layer_cross_attns", tuple(x and not lin for x, lin in zip(c.layer_cross_attns, c.use_linear_cross_attn)))
    has_block = [full or lin for full, lin in zip(c.layer_attns, c.use_linear_attn)]
    put("layer_attns_depth", tuple(d if block else 1 for d, block in zip(c.layer_attns_depth, has_block)))
    if not any(has_block):
        put("ff_mult", UNET_DEFAULTS["ff_mult"])
    if not c.attend_at_middle:
        put("layer_mid_attns_depth", 1)
    uses_heads = (c.attn_pool_text or c.attend_at_middle or any(has_block) or any(c.layer_cross_attns) or
                  any(c.use_linear_cross_attn))
    if not uses_heads:
        put("attn_heads", UNET_DEFAULTS["attn_heads"])
        put("attn_dim_head", UNET_DEFAULTS["attn_dim_head"])
    if not c.cond_on_text:
        put("text_embed_dim", DEFAULT_TEXT_EMBED_DIM)
    if not c.attn_pool_text:
        put("attn_pool_num_latents", UNET_DEFAULTS["attn_pool_num_latents"])
    if c.init_cross_embed:
        put("init_conv_kernel_size", UNET_DEFAULTS["init_conv_kernel_size"])
    else:
        put("init_cross_embed_kernel_sizes", UNET_DEFAULTS["init_cross_embed_kernel_sizes"])
    if not c.memory_efficient and not any(c.num_resnet_blocks):
        put("use_global_context_attn", True)
    if not c.memory_efficient and n == 1:  # no upsampler at all
        put("pixel_shuffle_upsample", True)


def _heads(s: dict, n: int, attns: list, linear: list, cross: list) -> tuple[int, int]:
    """(attn_heads, attn_dim_head) from the first attention built with them (the middle ResnetBlocks' cross-attention
    is not: it keeps CrossAttention's own 8 heads of 64)."""
    prefixes = ["attn_pool.layers.0.0."] + [f"downs.{i}.3.layers.0.0." for i in range(n) if attns[i]] + \
        [f"downs.{i}.1.cross_attn." for i in range(n) if cross[i]] + ["mid_attn.layers.0.0."]
    for p in prefixes:
        if p + "q_scale" in s and p + "to_q.weight" in s:
            dim_head = s[p + "q_scale"][0]
            return s[p + "to_q.weight"][0] // dim_head, dim_head
    for i in range(n):
        if linear[i]:
            inner = s[f"downs.{i}.3.layers.0.0.to_q.1.weight"][0]
            heads = UNET_DEFAULTS["attn_heads"]
            if inner % heads:
                raise ValueError(f"downs.{i}.3.layers.0.0.to_q.1.weight: linear attention {inner} wide is not "
                                 f"{heads} heads (the only attention in these weights, so the heads are assumed)")
            return heads, inner // heads
    return UNET_DEFAULTS["attn_heads"], UNET_DEFAULTS["attn_dim_head"]


def _reject_other_formats(s: dict) -> None:
    if not s:
        raise ValueError("no tensors: an empty state dict is not an imagen-pytorch U-Net")
    if any(".groupnorm." in k for k in s):
        key = next(k for k in s if ".groupnorm." in k)
        raise ValueError(f"{key!r}: GroupNorm blocks are imagen-pytorch < 2.0 files, which are not supported (2.x "
                         f"uses ChanRMSNorm, '.norm.gamma'); re-save the U-Net with imagen-pytorch 2.x")
    if any(len(v) == 5 for v in s.values()):
        key = next(k for k, v in s.items() if len(v) == 5)
        raise ValueError(f"{key!r} is a 3-D convolution: imagen-pytorch's Unet3D (video) is not supported")


def _check_shapes(config: ImagenPytorchUNetConfig, s: dict) -> None:
    """ValueError naming the first differences between `s` and the state dict `config` builds (on the meta device:
    no memory, no initialisation cost)."""
    import torch

    from .imagen_pytorch import ImagenPytorchUNet

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in ImagenPytorchUNet(config).state_dict().items()}
    missing = sorted(set(expected) - set(s))
    unexpected = sorted(set(s) - set(expected))
    wrong = sorted(f"{k} {s[k]} (expected {expected[k]})" for k in set(s) & set(expected) if s[k] != expected[k])
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {keys[:4]}{' ...' if len(keys) > 4 else ''}" for what, keys in (
            ("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise ValueError(f"the tensors are not an imagen-pytorch 2.x Unet the shapes describe ({detail})")
