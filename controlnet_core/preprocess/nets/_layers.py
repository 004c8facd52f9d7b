"""Primitives shared by the preprocessor networks: Conv + BatchNorm fusion and TF 'same' padding."""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


def fuse_conv_bn(conv: nn.Conv2d | nn.Conv1d, bn: nn.BatchNorm2d) -> nn.Module:
    """The convolution with the eval-mode BatchNorm after it folded in (w * g / s, (b - m) * g / s + beta)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
    fused = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight = nn.Parameter(conv.weight * scale.view(-1, *([1] * (conv.weight.ndim - 1))), requires_grad=False)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
    return fused.eval()


def fuse_sequential(seq: nn.Sequential) -> None:
    """In place: every Conv directly followed by a BatchNorm inside `seq` absorbs it (the norm becomes Identity)."""
    names = list(seq._modules)
    for a, b in itertools.pairwise(names):
        conv, bn = seq._modules[a], seq._modules[b]
        if isinstance(conv, (nn.Conv2d, nn.Conv1d)) and isinstance(bn, nn.BatchNorm2d):
            seq._modules[a], seq._modules[b] = fuse_conv_bn(conv, bn), nn.Identity()


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding (more on the bottom/right when odd), as the tf_ EfficientNets were trained."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, C, H, W) replicate-padded on the bottom/right to multiples of `multiple`; also the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def channels_last(module: nn.Module) -> nn.Module:
    """Store the 4-D weights channels-last: oneDNN (CPU) and cuDNN then keep activations in NHWC, which avoids a
    layout conversion around every convolution. Measured on a 2-core AVX2 CPU (batch 2, 256x256): PiDiNet 1.65x,
    M-LSD 1.26x, NormalBAE 1.22x, HED 1.17x, TEED 1.07x faster; the lineart generators only with their instance
    norms as InstanceNormInPlace (torch's own returns a contiguous tensor, read through a slow strided pass)."""
    return module.to(memory_format=torch.channels_last)


class InstanceNormInPlace(nn.Module):
    """nn.InstanceNorm2d (affine=False, eps 1e-5, biased variance), optionally with the ReLU after it, normalising
    its input in place and keeping its memory layout. The torch op reads a channels-last tensor through a strided
    Welford pass and returns a new contiguous one (a fresh allocation of the activation's size, with page faults when
    it is large); here the mean is one reduction, the centred values are overwritten in place, their squares are
    summed in 4 MB chunks and the scale and the ReLU are applied in place. For inference only: it overwrites the
    convolution output it is given."""

    def __init__(self, relu: bool, eps: float = 1e-5):
        super().__init__()
        self.relu, self.eps = relu, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), any memory layout -> the same tensor, normalised per (sample, channel)."""
        b, c, h, w = x.shape
        x.sub_(x.mean((2, 3), keepdim=True))
        x.mul_(_sum_of_squares(x).div_(h * w).add_(self.eps).rsqrt_().view(b, c, 1, 1).to(x.dtype))
        return x.relu_() if self.relu else x


def _sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C) float32 sums of x^2 over H, W, without an activation-sized temporary."""
    b, c, h, w = x.shape
    if x.is_contiguous():
        planes = x.reshape(b * c, 1, h * w)
        return torch.bmm(planes, planes.transpose(1, 2)).view(b, c).float()
    pixels = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view when channels-last
    out = x.new_zeros(b, c, dtype=torch.float32)
    step = max(1, (1 << 20) // c)
    for i in range(b):
        for start in range(0, h * w, step):
            chunk = pixels[i, start: start + step]  # (step, C)
            out[i] += chunk.float().square().sum(0)
    return out


def fuse_instance_norms(module: nn.Module) -> nn.Module:
    """In place: every InstanceNorm2d without affine parameters inside `module` (in a Sequential) becomes an
    InstanceNormInPlace, absorbing the ReLU that directly follows it."""
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for i, name in enumerate(names):
            norm = seq._modules[name]
            if not isinstance(norm, nn.InstanceNorm2d) or norm.affine or norm.track_running_stats:
                continue
            relu = i + 1 < len(names) and isinstance(seq._modules[names[i + 1]], nn.ReLU)
            seq._modules[name] = InstanceNormInPlace(relu, norm.eps)
            if relu:
                seq._modules[names[i + 1]] = nn.Identity()
    return module


def conv2d_relu(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """relu(conv(x)), the ReLU applied inside oneDNN's convolution on the CPU (a post-op on each output tile while
    it is in cache: the same sums, no second pass over the activation and no extra allocation); elsewhere, or for
    other dtypes, the plain two steps. Needs a zero-padded ('zeros' padding mode) convolution with int padding."""
    if _fused_applies(x, conv):
        return _conv2d_pointwise(x, conv, "relu")
    return F.relu(conv(x))


def conv2d_silu(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """silu(conv(x)), the SiLU (oneDNN's 'swish' post-op) applied inside the convolution on the CPU as in
    `conv2d_relu`; elsewhere the plain two steps."""
    if _fused_applies(x, conv):
        return _conv2d_pointwise(x, conv, "swish")
    return F.silu(conv(x))


def _conv2d_pointwise(x: torch.Tensor, conv: nn.Conv2d, attr: str) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
                                                   list(conv.dilation), conv.groups, attr, [], "")


def _fused_applies(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """oneDNN's fused op (private to torch, so looked up, never assumed) for float32 inference on the CPU with a
    zero-padded convolution; training keeps the differentiable two steps."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))
