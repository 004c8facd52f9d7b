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
    M-LSD 1.26x, NormalBAE 1.22x, HED 1.17x, TEED 1.07x faster; the instance-normed lineart generators 0.86x
    (so they keep the default layout)."""
    return module.to(memory_format=torch.channels_last)


class SubPixelConv(nn.Module):
    """A stride-2 ConvTranspose2d (output 2H x 2W) as one convolution of the input to 4 x C_out channels and a
    pixel shuffle: output pixel (2m + a, 2n + b) only ever sees the kernel taps of its phase (a, b), so the
    transposed convolution is a small ordinary one per phase (the same sums, computed by the fast forward path)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pads: tuple[int, int]):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # (4 C_out, C_in, T, T)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)  # (C_out,)
        self.pads = pads  # (before, after) on both spatial axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before, after = self.pads
        y = F.pixel_shuffle(F.conv2d(F.pad(x, (before, after, before, after)), self.weight), 2)  # (B, C_out, 2H, 2W)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def subpixel(deconv: nn.ConvTranspose2d) -> SubPixelConv:
    """The SubPixelConv equal to `deconv` (stride 2, groups 1, dilation 1, output size exactly twice the input)."""
    k, p = deconv.kernel_size[0], deconv.padding[0]
    if deconv.stride != (2, 2) or deconv.groups != 1 or deconv.dilation != (1, 1) or \
            2 * p != k - 2 + deconv.output_padding[0]:
        raise ValueError(f"{deconv} does not double the size with stride 2")
    # phase a, tap ky: input row i = m + (a + p - ky) / 2 for ky of the phase's parity
    taps = {a: {(a + p - ky) // 2: ky for ky in range(k) if (a + p - ky) % 2 == 0} for a in (0, 1)}
    lo = min(d for t in taps.values() for d in t)
    hi = max(d for t in taps.values() for d in t)
    w = deconv.weight.detach()  # (C_in, C_out, k, k)
    cin, cout = w.shape[:2]
    out = w.new_zeros(cout, 2, 2, cin, hi - lo + 1, hi - lo + 1)
    for a, rows in taps.items():
        for b, cols in taps.items():
            for di, ky in rows.items():
                for dj, kx in cols.items():
                    out[:, a, b, :, di - lo, dj - lo] = w[:, :, ky, kx].t()
    bias = None if deconv.bias is None else deconv.bias.detach().clone()
    return SubPixelConv(out.reshape(4 * cout, cin, hi - lo + 1, hi - lo + 1), bias, (-lo, hi)).eval()


def subpixel_all(module: nn.Module) -> nn.Module:
    """In place: every ConvTranspose2d inside `module` (in a Sequential) becomes its SubPixelConv."""
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for name, child in list(seq._modules.items()):
            if isinstance(child, nn.ConvTranspose2d):
                seq._modules[name] = subpixel(child)
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
