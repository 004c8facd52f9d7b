"""ControlNet-Union / ProMax (xinsir "ControlNet++", SDXL): the plain ControlNet plus a type embedding and a fuser.

Follows xinsir6/ControlNetPlus `models/controlnet_union.py` and diffusers `ControlNetUnionModel` (the oracle), see
shared/research/formats_beyond.md §4:

1. `emb += control_add_embedding(sinusoid_256(type_vector))`: every element of the 0/1 vector over the T types is
   embedded (cos first) and the T embeddings are concatenated (T * 256 wide).
2. per condition k: `c_k = input_hint_block(hint_k)`, token `t_k = mean_hw(c_k) + task_embedding[k]`.
3. the tokens go through `transformer_layes` (one residual attention block, QuickGELU MLP); `alpha_k =
   spatial_ch_projs(out_k)`.
4. `h0 = conv_in(x) + sum_k (c_k + alpha_k)`, then the usual encoder; the residuals are the plain ControlNet's.

The attention axis is the reference's: `nn.MultiheadAttention(batch_first=False)` on a `[B, L, C]` tensor attends
across the **batch rows**, one token position at a time. Token positions therefore never mix: each condition's
alpha depends only on that condition's rows, and the reference's extra `mean_hw(conv_in(x))` token has no effect on
any output (it is omitted here). With one hint for every row (cond and uncond of one image) the attention reduces to
`out_proj(v_proj(ln_1(t)))`, which is also what the host computes; rows carrying different hints differ from the
host (which attends across tokens), see docs/formats.md "Union".

Several conditions in one forward follow diffusers' multi-condition rule: each condition's strength scales its
token, its hint features and its alpha, and the residuals are not scaled again. One condition: unscaled fuser,
residuals times the strength (as a plain ControlNet).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import timestep_embedding
from .controlnet import ControlNet, ControlNetConfig
from .errors import CheckpointError, ControlNetError

log = logging.getLogger(__name__)

# The host's SetUnionControlNetType names (comfy/cldm/control_types.py) and the xinsir ids; 6 and 7 need ProMax.
UNION_TYPES = {
    "openpose": 0,
    "depth": 1,
    "hed/pidi/scribble/ted": 2,
    "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4,
    "segment": 5,
    "tile": 6,
    "repaint": 7,
}
UNION_TYPE_ALIASES = {"inpaint/outpaint": "repaint", "inpaint": "repaint"}  # Advanced-ControlNet's name for 7
AUTO = "auto"
UNION_TYPE_OPTIONS = (AUTO, *UNION_TYPES)
TYPE_EMBED_DIM = 256  # sinusoid width per type (diffusers addition_time_embed_dim)
TOKEN_HEADS = 8  # num_trans_head: not recoverable from the weights; 8 in xinsir's, diffusers' and the host's code
UNION_MARKERS = ("task_embedding", "control_add_embedding.linear_1.weight")
UNION_PREFIXES = ("task_embedding", "control_add_embedding.", "transformer_layes.", "spatial_ch_projs.")


def union_type_id(name: str | int | None, num_types: int, *, source: str = "this union ControlNet") -> int | None:
    """Type name (host or ACN spelling) or id -> id; None / "auto" -> None; an id the file lacks -> clear error."""
    if name is None or name == AUTO:
        return None
    if isinstance(name, str):
        key = UNION_TYPE_ALIASES.get(name, name)
        if key not in UNION_TYPES:
            raise ControlNetError(f"union_type {name!r} is unknown: choose one of {list(UNION_TYPE_OPTIONS)}.")
        type_id = UNION_TYPES[key]
    else:
        type_id = int(name)
    if not 0 <= type_id < num_types:
        names = [k for k, v in UNION_TYPES.items() if v < num_types]
        promax = " (tile and repaint need the ProMax file, diffusion_pytorch_model_promax.safetensors)" \
            if type_id in (6, 7) else ""
        raise ControlNetError(f"union_type {name!r} (id {type_id}) is not in {source}: it has {num_types} types "
                              f"({', '.join(names)}){promax}.")
    return type_id


# ---------------------------------------------------------------------------------------------------------------------
# The fuser's modules (names = the xinsir / diffusers keys)
# ---------------------------------------------------------------------------------------------------------------------


class RowAttention(nn.Module):
    """Multi-head self-attention over axis 1 of (N, L, C), N independent groups; parameters named as
    `nn.MultiheadAttention`'s (`in_proj_weight`, `in_proj_bias`, `out_proj`)."""

    def __init__(self, width: int, heads: int = TOKEN_HEADS):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, t: Tensor) -> Tensor:
        n, length, width = t.shape
        q, k, v = F.linear(t, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)  # (N, L, C) each
        q, k, v = (z.view(n, length, self.heads, -1).transpose(1, 2) for z in (q, k, v))  # (N, h, L, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, h, L, d)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))  # (N, L, C)


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class TokenMlp(nn.Module):
    """`mlp.c_fc` (C -> 4C), QuickGELU, `mlp.c_proj` (4C -> C)."""

    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class TokenBlock(nn.Module):
    """Pre-norm residual attention block (`attn`, `ln_1`, `mlp`, `ln_2`); attention over axis 1 of (N, L, C)."""

    def __init__(self, width: int, heads: int = TOKEN_HEADS):
        super().__init__()
        self.attn = RowAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = TokenMlp(width)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))  # (N, L, C)
        return x + self.mlp(self.ln_2(x))  # (N, L, C)


class ControlTypeEmbedding(nn.Module):
    """`control_add_embedding`: Linear(256 T, 4mc), SiLU, Linear(4mc, 4mc) over the concatenated type sinusoids."""

    def __init__(self, num_types: int, out_dim: int):
        super().__init__()
        self.num_types = num_types
        self.linear_1 = nn.Linear(TYPE_EMBED_DIM * num_types, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, type_vector: Tensor) -> Tensor:
        """(T,) 0/1 vector -> (1, 4mc)."""
        sin = timestep_embedding(type_vector, TYPE_EMBED_DIM).reshape(1, -1)  # (1, 256 T), cos first
        sin = sin.to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(sin)))  # (1, 4mc)


# ---------------------------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------------------------


class UnionControlNet(ControlNet):
    """A ControlNet with the union type embedding and condition fuser; residuals as the plain ControlNet's."""

    def __init__(self, config: ControlNetConfig, num_types: int, layers: int = 1):
        super().__init__(config)
        width = config.model_channels  # the fused features are added to conv_in's output: same width
        self.task_embedding = nn.Parameter(torch.empty(num_types, width))
        self.transformer_layes = nn.ModuleList(TokenBlock(width) for _ in range(layers))
        self.spatial_ch_projs = nn.Linear(width, width)
        self.control_add_embedding = ControlTypeEmbedding(num_types, 4 * config.model_channels)

    @property
    def num_types(self) -> int:
        return int(self.task_embedding.shape[0])

    def type_embedding(self, type_ids: Sequence[int], device: torch.device | None = None) -> Tensor:
        """The (1, 4mc) embedding added to the time embedding; no ids = the all-zero vector (the host's "auto")."""
        vec = torch.zeros(self.num_types, device=device or self.task_embedding.device)
        for k in type_ids:
            vec[union_type_id(k, self.num_types)] = 1.0
        return self.control_add_embedding(vec)  # (1, 4mc)

    def fuse(self, guided: Tensor, type_id: int, scale: float | None = None) -> Tensor:
        """One condition's share of the fused hint, (R, mc, h, w) -> (R, mc, h, w): c + alpha, or with `scale` (the
        multi-condition rule) s c + s alpha(s t). Attention runs across the R rows (the reference's axis)."""
        token = guided.mean(dim=(2, 3)) + self.task_embedding[type_id].to(guided.dtype)  # (R, C)
        if scale is not None:
            token = token * scale
        out = token.unsqueeze(0)  # (1, R, C): one group, attention across the rows
        for block in self.transformer_layes:
            out = block(out)
        alpha = self.spatial_ch_projs(out[0])[:, :, None, None]  # (R, mc, 1, 1)
        if scale is None:
            return guided + alpha  # (R, mc, h, w)
        return guided * scale + alpha * scale  # (R, mc, h, w)

    def union_forward(self, x: Tensor, hints: Sequence[Tensor], type_ids: Sequence[int], timesteps: Tensor,
                      context: Tensor, y: Tensor | None = None, scales: Sequence[float] | None = None
                      ) -> dict[str, list[Tensor]]:
        """Residuals for several (hint, type) conditions in one pass; `scales` as diffusers' conditioning_scale
        (one condition: residuals scaled; several: each condition scaled). No conditions = "auto" is not this."""
        if len(hints) != len(type_ids) or not hints:
            raise ControlNetError(f"union_forward got {len(hints)} hints and {len(type_ids)} types; give one type per "
                                  "hint (at least one).")
        ids = [union_type_id(k, self.num_types) for k in type_ids]
        scales = list(scales) if scales is not None else [1.0] * len(hints)
        multi = len(hints) > 1
        fused = None
        for hint, k, s in zip(hints, ids, scales):
            part = self.fuse(self.encode_hint(hint), k, s if multi else None)  # (B, mc, h, w)
            fused = part if fused is None else fused + part
        out = self(x, None, timesteps, context, y, guided_hint=fused,
                   extra_emb=self.type_embedding(ids, x.device).to(x.dtype))
        if not multi and scales[0] != 1.0:
            out = {k: [r * scales[0] for r in v] for k, v in out.items()}
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Layout: detection, conversion, strict loading
# ---------------------------------------------------------------------------------------------------------------------


def is_union(sd: Mapping[str, Tensor]) -> bool:
    """Union signature: `task_embedding` and `control_add_embedding.linear_1.weight` (shape[1] = 256 T)."""
    return all(k in sd for k in UNION_MARKERS)


def _is_extra(key: str) -> bool:
    return key.startswith(UNION_PREFIXES)


def union_to_ldm(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers union layout (xinsir files) -> our names: the ControlNet part by the diffusers -> ldm map, the
    extras as they are (the host's `.attn.in_proj.` spelling mapped back to `nn.MultiheadAttention`'s)."""
    from .formats import ldm_from_diffusers, ldm_from_ldm

    base = {k: v for k, v in sd.items() if not _is_extra(k)}
    to_ldm = ldm_from_diffusers if "controlnet_cond_embedding.conv_in.weight" in base else ldm_from_ldm
    out = to_ldm(base)
    for key, value in sd.items():
        if _is_extra(key):
            out[re.sub(r"\.attn\.in_proj\.(weight|bias)$", r".attn.in_proj_\1", key)] = value
    return out


def union_config(ldm_sd: Mapping[str, Tensor], source: str = "<state dict>") -> tuple[ControlNetConfig, int, int]:
    """(ControlNet config, number of types, fuser layers) from our union names and shapes."""
    task = ldm_sd.get("task_embedding")
    if task is None or task.ndim != 2:
        raise CheckpointError(f"{source}: no 2-D 'task_embedding'; not a ControlNet-Union file.")
    config = ControlNetConfig.from_state_dict({k: v for k, v in ldm_sd.items() if not _is_extra(k)}, source=source)
    if int(task.shape[1]) != config.model_channels:
        raise CheckpointError(f"{source}: task_embedding is {tuple(task.shape)} but the ControlNet is "
                              f"{config.model_channels} wide; the file mixes two models.")
    layers = len({m.group(1) for k in ldm_sd if (m := re.match(r"transformer_layes\.(\d+)\.", k))})
    return config, int(task.shape[0]), layers


def build_union(ldm_sd: Mapping[str, Tensor], source: str = "<state dict>") -> UnionControlNet:
    """The UnionControlNet the keys describe, on the meta device, strictly checked against them (no weights)."""
    from .formats import check_keys

    config, num_types, layers = union_config(ldm_sd, source)
    with torch.device("meta"):
        net = UnionControlNet(config, num_types, layers)
    check_keys({k: v.shape for k, v in net.state_dict().items()}, ldm_sd, source)
    return net


@dataclass(frozen=True)
class UnionChecked:
    """A union file read, renamed to our names and checked strictly against the net its keys describe."""

    source: str
    format: str
    state_dict: dict[str, Tensor]
    config: ControlNetConfig
    num_types: int
    layers: int
    storage_dtype: torch.dtype


def check_union(sd: Mapping[str, Tensor], source: str = "<state dict>") -> UnionChecked:
    """The formats table's check for kind "union": names, config, strict key/shape check on the meta device."""
    from .formats import storage_dtype

    if not is_union(sd):
        raise CheckpointError(f"{source}: not a ControlNet-Union file (no {' / '.join(UNION_MARKERS)}).")
    ldm_sd = union_to_ldm(sd)
    build_union(ldm_sd, source)  # strict check
    config, num_types, layers = union_config(ldm_sd, source)
    layout = "diffusers" if "controlnet_cond_embedding.conv_in.weight" in sd else "ldm"
    return UnionChecked(source, layout, ldm_sd, config, num_types, layers, storage_dtype(ldm_sd, source))


def build_union_net(ck: UnionChecked, *, dtype: torch.dtype | None = None, device=None,
                    borrowed: bool = False) -> UnionControlNet:
    """UnionControlNet in eval mode whose parameters are the checked tensors (cast to dtype, None = storage)."""
    target = dtype or ck.storage_dtype
    weights = {k: v.to(device=device, dtype=target if v.is_floating_point() else None, copy=borrowed)
               for k, v in ck.state_dict.items()}
    with torch.device("meta"):
        net = UnionControlNet(ck.config, ck.num_types, ck.layers)
    net.load_state_dict(weights, strict=True, assign=True)
    net.source, net.source_format, net.storage_dtype = ck.source, ck.format, ck.storage_dtype
    log.debug("loaded %s: %s union ControlNet, %d types", ck.source, ck.config.family, ck.num_types)
    return net.eval()


def union_info(ck: UnionChecked) -> dict:
    """inspect's fields for a union file (the types it has in `extra`)."""
    from .formats import DTYPE_NAMES

    return dict(format=ck.format, family=ck.config.family, variant=ck.config.variant,
                dtype=DTYPE_NAMES.get(ck.storage_dtype, str(ck.storage_dtype)),
                parameters=sum(v.numel() for v in ck.state_dict.values()),
                residual_channels=tuple(ck.config.residual_channels), context_dim=ck.config.context_dim,
                hint_channels=ck.config.hint_channels,
                extra={"union_types": [k for k, v in UNION_TYPES.items() if v < ck.num_types]})


def load_union(path_or_state_dict, *, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> UnionControlNet:
    """A union file (or state dict) -> UnionControlNet in eval mode, strictly; dtype None keeps the storage dtype."""
    from .formats import read_state_dict, unwrap

    if isinstance(path_or_state_dict, Mapping):
        source, sd, borrowed = "<state dict>", unwrap(path_or_state_dict), True
    else:
        source, sd, borrowed = str(path_or_state_dict), read_state_dict(path_or_state_dict), False
    return build_union_net(check_union(sd, source), dtype=dtype, device=device, borrowed=borrowed)
