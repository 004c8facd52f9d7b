"""Untrained end-to-end demo: picture -> canny hint -> ControlNet residuals -> controlled Euler sampling -> one PNG.

No trained model ships with the package yet, so the demo builds a small SD1-architecture U-Net with random but
deterministic weights, derives a ControlNet from it as the paper does (§3.2 trainable copy,
`create_controlnet_from_unet`) and gives its zero convolutions small random weights so the control has a visible
effect (at zero, as after initialisation, the controlled U-Net equals the plain one exactly: `controlled_minus_plain`
shows both). The random hint encoder is rescaled so its output is not drowned by the latent's features; with
trained weights none of this is needed.
Sampling is k-diffusion's Euler sampler (`k_diffusion/sampling.py::sample_euler`) on SD's discrete eps schedule.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import ControlNetError

logger = logging.getLogger(__name__)

PANEL = 256  # pixels per panel in the picture
PAD = 16
HEADER = 76  # title + two caption lines
FOOTER = 40  # panel labels
PANELS = 4  # picture, hint, residual bars, difference heat map
HEAT_COLOURS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)


@dataclass(frozen=True)
class DemoSettings:
    """Image side (pixels, latent = side / 8), Euler steps, seed, U-Net width, zero-conv weight scale."""

    size: int = 256
    steps: int = 8
    seed: int = 0
    model_channels: int = 32
    zero_conv_scale: float = 0.05
    hint_std: float = 3.0  # spread of the guided hint (untrained default init would give ~0.02)

    def __post_init__(self) -> None:
        if self.size < 64 or self.size % 32:
            raise ControlNetError(f"demo size {self.size}: use a multiple of 32, at least 64 (e.g. 256)")
        if self.steps < 1:
            raise ControlNetError(f"demo steps {self.steps}: use at least 1 (e.g. 8)")


@dataclass(frozen=True)
class Models:
    unet: torch.nn.Module
    controlnet: torch.nn.Module
    context: Tensor  # (1, T, 768) stand-in text embedding


@dataclass(frozen=True)
class Sample:
    latent: Tensor  # (1, 4, h, w)
    residual_magnitudes: tuple[float, ...]  # mean |r| per residual, averaged over steps (empty without control)


@dataclass(frozen=True)
class DemoResult:
    path: Path
    max_difference: float  # max |controlled - plain| over the final latent
    residual_magnitudes: tuple[float, ...]
    seconds: dict[str, float]


def canvas_size() -> tuple[int, int]:
    """(width, height) of the demo picture."""
    return PANELS * PANEL + (PANELS + 1) * PAD, HEADER + PANEL + FOOTER


@contextmanager
def _seeded(seed: int):
    """Deterministic default initialisation without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _randomise_(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Replace every weight with a small random value (ldm zero-initialises out convs, which would hide everything)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):  # norm scales
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5))


def _perturb_zero_convs_(net: torch.nn.Module, scale: float, gen: torch.Generator) -> None:
    """Zero convs (and the hint encoder's zero conv) get N(0, scale^2) weights; scale 0 leaves them at zero."""
    layers = [*(zc[0] for zc in net.zero_convs), net.middle_block_out[0], net.input_hint_block[-1]]
    with torch.no_grad():
        for conv in layers:
            conv.weight.copy_(scale * torch.randn(conv.weight.shape, generator=gen))
            conv.bias.copy_(scale * torch.randn(conv.bias.shape, generator=gen))


def _strengthen_hint_(net: torch.nn.Module, hint: Tensor, std: float, gen: torch.Generator) -> None:
    """He-initialise hint convs 0-12 (zero biases), rescale conv 14 so the guided hint has `std` on this hint: an
    untrained encoder's default init shrinks it to ~0.02, far below the latent's features (the map would be noise)."""
    convs = [m for m in net.input_hint_block if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs[:-1]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / conv.weight[0].numel()) ** 0.5)
            conv.bias.zero_()
        convs[-1].bias.zero_()  # blank hint areas give a zero guided hint: the control sits on the edges
        spread = net.encode_hint(hint).std()
        if spread > 0:
            convs[-1].weight.mul_(std / spread)


def build_models(settings: DemoSettings, hint: Tensor) -> Models:
    """Random SD1-architecture U-Net (3 levels) and the ControlNet copied from it, deterministic in the seed."""
    from .controlnet import create_controlnet_from_unet
    from .unet import ControlledUNet, UNetConfig

    config = UNetConfig(model_channels=settings.model_channels, channel_mult=(1, 2, 2), transformer_depth=(1, 1, 1),
                        transformer_depth_middle=1, context_dim=768, num_heads=8)
    gen = torch.Generator().manual_seed(settings.seed)
    with _seeded(settings.seed):
        unet = ControlledUNet(config)
    _randomise_(unet, gen)
    with _seeded(settings.seed + 1):  # hint convs get default init here (then replaced): keep the caller's RNG
        controlnet = create_controlnet_from_unet(unet.state_dict())
    _perturb_zero_convs_(controlnet, settings.zero_conv_scale, gen)
    _strengthen_hint_(controlnet, hint, settings.hint_std, gen)
    context = torch.randn(1, 8, config.context_dim, generator=gen)  # (1, T, 768)
    return Models(unet.eval(), controlnet.eval(), context)


def sample_image(size: int) -> Tensor:
    """A procedural picture (1, size, size, 3) in [0, 1]: gradient sky, sun, house, hill — edges for canny."""
    from PIL import Image, ImageDraw

    s = size
    ramp = np.linspace(0.0, 1.0, s, dtype=np.float32)[:, None, None]
    sky = (1 - ramp) * np.array([90, 150, 230], np.float32) + ramp * np.array([200, 225, 250], np.float32)
    picture = Image.fromarray(np.broadcast_to(sky, (s, s, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    draw.ellipse((0.68 * s, 0.08 * s, 0.88 * s, 0.28 * s), fill=(250, 210, 60))
    draw.ellipse((-0.3 * s, 0.62 * s, 0.7 * s, 1.4 * s), fill=(70, 150, 70))
    draw.rectangle((0.45 * s, 0.45 * s, 0.8 * s, 0.78 * s), fill=(190, 90, 60))
    draw.polygon([(0.40 * s, 0.46 * s), (0.625 * s, 0.25 * s), (0.85 * s, 0.46 * s)], fill=(120, 40, 40))
    draw.rectangle((0.58 * s, 0.6 * s, 0.67 * s, 0.78 * s), fill=(60, 40, 30))
    draw.rectangle((0.5 * s, 0.52 * s, 0.56 * s, 0.58 * s), fill=(240, 240, 200))
    return torch.from_numpy(np.asarray(picture, np.float32) / 255.0)[None]  # (1, H, W, 3)


def canny_hint(image: Tensor) -> Tensor:
    """(1, H, W, 3) picture -> (1, 3, H, W) canny hint in [0, 1], thresholds 100/200 as the canny models used."""
    from . import preprocess

    edges = preprocess.run("canny", image, low_threshold=100, high_threshold=200)  # (1, H, W, 3)
    return edges.movedim(-1, 1).contiguous()  # (1, 3, H, W)


def sd_sigmas(steps: int) -> tuple[Tensor, Tensor]:
    """SD's scaled-linear discrete schedule (betas 0.00085..0.012): (timesteps, sigmas + final 0), high to low."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    all_sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    timesteps = torch.linspace(999, 0, steps, dtype=torch.float64).round().long()
    return timesteps, torch.cat([all_sigmas[timesteps], torch.zeros(1, dtype=torch.float64)]).float()


@torch.no_grad()
def sample(models: Models, hint: Tensor | None, settings: DemoSettings) -> Sample:
    """Euler sampling (k-diffusion `sample_euler`, eps prediction); with `hint` the ControlNet's residuals are added."""
    latent_side = settings.size // 8
    timesteps, sigmas = sd_sigmas(settings.steps)
    gen = torch.Generator().manual_seed(settings.seed + 2)
    x = torch.randn(1, 4, latent_side, latent_side, generator=gen) * sigmas[0]  # (1, 4, h, w)
    guided = models.controlnet.encode_hint(hint) if hint is not None else None  # (1, mc, h, w), once for all steps
    magnitudes = []
    for i, t in enumerate(timesteps):
        x_in = x / (sigmas[i] ** 2 + 1).sqrt()  # (1, 4, h, w) c_in scaling
        t_batch = t.reshape(1)
        control = None
        if guided is not None:
            control = models.controlnet(x_in, None, t_batch, models.context, guided_hint=guided)
            magnitudes.append([r.abs().mean().item() for r in (*control["output"], *control["middle"])])
        eps = models.unet(x_in, t_batch, models.context, control=control)  # (1, 4, h, w)
        x = x + eps * (sigmas[i + 1] - sigmas[i])  # Euler step: d = (x - denoised) / sigma = eps
    mean = tuple(float(v) for v in np.mean(magnitudes, axis=0)) if magnitudes else ()
    return Sample(x, mean)


def controlled_minus_plain(models: Models, hint: Tensor, settings: DemoSettings) -> Tensor:
    """Final latent with the control minus without it (1, 4, h, w); exactly zero when the zero convs are zero."""
    return sample(models, hint, settings).latent - sample(models, None, settings).latent


def heat_map(difference: Tensor) -> np.ndarray:
    """(1, 4, h, w) -> (h, w, 3) uint8: mean |difference| over channels / its 99th percentile, inferno-like ramp."""
    magnitude = difference.abs().mean(dim=1)[0].numpy()  # (h, w)
    top = np.percentile(magnitude, 99)  # a few extreme pixels would flatten the rest of the map
    scaled = np.clip(magnitude / top, 0, 1) if top > 0 else magnitude
    position = scaled * (len(HEAT_COLOURS) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(HEAT_COLOURS) - 2)
    frac = (position - low)[..., None]
    return ((1 - frac) * HEAT_COLOURS[low] + frac * HEAT_COLOURS[low + 1]).astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable built-in font
    except TypeError:
        return ImageFont.load_default()


def _wrap(text: str, width_of, limit: float) -> list[str]:
    """Greedy word wrap by measured width."""
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if lines[-1] and width_of(candidate) > limit:
            lines.append(word)
        else:
            lines[-1] = candidate
    return lines


def bar_chart(values: tuple[float, ...], channels: tuple[int, ...]):
    """PIL image (PANEL x PANEL): one bar per residual (host order, middle last), height = mean |residual|."""
    from PIL import Image, ImageDraw

    chart = Image.new("RGB", (PANEL, PANEL), "white")
    draw = ImageDraw.Draw(chart)
    font = _font(10)
    left, bottom, top = 28, PANEL - 30, 18
    width = (PANEL - left - 6) / len(values)
    peak = max(values) or 1.0
    draw.line((left, top, left, bottom), fill="black")
    draw.line((left, bottom, PANEL - 4, bottom), fill="black")
    draw.text((left + 4, 2), f"max {peak:.3g}", fill="black", font=font)
    for i, (value, ch) in enumerate(zip(values, channels)):
        x0 = left + i * width + 2
        colour = (200, 80, 60) if i == len(values) - 1 else (60, 110, 200)  # middle residual in red
        draw.rectangle((x0, bottom - (bottom - top) * value / peak, x0 + width - 4, bottom), fill=colour)
        draw.text((x0, bottom + 3), "M" if i == len(values) - 1 else str(i), fill="black", font=font)
        draw.text((x0, bottom + 15), str(ch), fill=(110, 110, 110), font=font)
    return chart


def render(image: Tensor, hint: Tensor, magnitudes: tuple[float, ...], channels: tuple[int, ...],
           difference: Tensor, caption: str):
    """The demo picture: title, caption, then picture | hint | residual bars | difference heat map, labelled."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", canvas_size(), (245, 245, 245))
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, 8), "ControlNet demo (untrained weights)", fill="black", font=_font(18))
    small = _font(11)
    for row, line in enumerate(_wrap(caption, lambda text: draw.textlength(text, font=small), canvas.width - 2 * PAD)):
        draw.text((PAD, 32 + 14 * row), line, fill=(60, 60, 60), font=small)
    to_pil = lambda a: Image.fromarray(a).resize((PANEL, PANEL), Image.NEAREST)  # noqa: E731
    panels = [
        (to_pil((image[0].numpy() * 255).round().astype(np.uint8)), "input picture (procedural)"),
        (to_pil((hint[0].movedim(0, -1).numpy() * 255).round().astype(np.uint8)), "canny hint 100/200"),
        (bar_chart(magnitudes, channels), "mean |residual| per block (M = middle)"),
        (to_pil(heat_map(difference)), f"|controlled - plain| latent, max {difference.abs().max():.3g}"),
    ]
    for i, (panel, label) in enumerate(panels):
        x = PAD + i * (PANEL + PAD)
        canvas.paste(panel, (x, HEADER))
        draw.text((x, HEADER + PANEL + 8), label, fill="black", font=_font(11))
    return canvas


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings()) -> DemoResult:
    """Build, preprocess, sample with and without the control, write one PNG to `out`; timings are logged."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now
        logger.info("demo: %s in %.2f s", name, seconds[name])

    image = sample_image(settings.size)
    hint = canny_hint(image)
    lap("canny hint")
    models = build_models(settings, hint)
    lap("built U-Net + ControlNet")
    controlled = sample(models, hint, settings)
    lap(f"{settings.steps} controlled Euler steps")
    plain = sample(models, None, settings)
    lap(f"{settings.steps} plain Euler steps")
    difference = controlled.latent - plain.latent  # (1, 4, h, w)
    channels = tuple(models.controlnet.config.residual_channels)
    caption = (f"Random SD1-architecture U-Net (width {settings.model_channels}, seed {settings.seed}) and its "
               f"trainable copy (paper 3.2); zero convs given small random weights (std {settings.zero_conv_scale}) "
               f"so the control has an effect, hint encoder scaled to std {settings.hint_std}. "
               f"{settings.steps} Euler steps at {settings.size}px, with and without the control.")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    render(image, hint, controlled.residual_magnitudes, channels, difference, caption).save(out)
    lap("picture")
    logger.info("demo: wrote %s, max |controlled - plain| = %.4g", out, difference.abs().max())
    return DemoResult(out, float(difference.abs().max()), controlled.residual_magnitudes, seconds)
