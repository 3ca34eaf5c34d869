"""Data augmentation: the random transforms training applies, and the fixed augmented test set.

``augment`` is what training does to each batch (``Augment``'s ranges; the ``AUGMENT_PRESETS``
are ``invoke train --augment``'s choices); ``augmented_images`` is the evaluation's "augmented"
test set and the images ``trainer.uncertainty.calibrate`` sets the "not sure" threshold on.
Kept apart from train.py and evaluation/ so that both import it and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mnist_common.constants import IMAGE_SIZE

#: Seed of the generator that draws the augmented set's transforms (any fixed value would do;
#: training seeds its own generator with ``Config.seed``, 0 by default).
AUGMENT_SEED = 1729


@dataclass
class Augment:
    """Ranges of the random transforms, drawn uniformly and independently per image.

    rotation_deg: +/- degrees; translate_px: +/- pixels on the 28x28 grid; scale: +/- fraction;
    shear_deg: +/- degrees of horizontal shear (slant); elastic_px: largest displacement of the
    elastic distortion, in pixels (0 turns it off), a random field on an elastic_grid x
    elastic_grid lattice of control points, interpolated bicubically to 28x28 (so it bends
    strokes smoothly, over about 28 / elastic_grid pixels); stroke: probability that an image's
    strokes are made thinner or thicker (half each) by about one pixel (0 turns it off); ink:
    probability that an image's ink is made fainter in places, multiplied by a smooth random
    field with values in [ink_min, 1] (3 x 3 lattice, bicubic), as a pen whose colour changes
    along the stroke leaves it (web/pen.js's challenge pen: light colours give ink down to about
    0.2); 0 turns it off.
    """

    rotation_deg: float = 12.0
    translate_px: float = 2.5
    scale: float = 0.10
    shear_deg: float = 8.0
    elastic_px: float = 0.0
    elastic_grid: int = 4
    stroke: float = 0.0
    ink: float = 0.0
    ink_min: float = 0.3


#: ``--augment`` presets: "draw" (the default) adds to "affine" what canvas drawings differ in.
AUGMENT_PRESETS = {
    "none": Augment(rotation_deg=0, translate_px=0, scale=0, shear_deg=0),
    "affine": Augment(),
    "draw": Augment(rotation_deg=12, translate_px=2.5, scale=0.12, shear_deg=15, elastic_px=1.5, stroke=0.5, ink=0.3),
}


def uniform(n: int, limit: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` values drawn uniformly from [-limit, limit] (on the CPU, like every random draw of
    the augmentation: the same seed gives the same transforms on any device)."""
    return (torch.rand(n, generator=generator) * 2 - 1) * limit


def affine_theta(n: int, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) random affine matrices in ``affine_grid``'s [-1, 1] coordinates."""
    angle = torch.deg2rad(uniform(n, aug.rotation_deg, generator))
    shear = torch.tan(torch.deg2rad(uniform(n, aug.shear_deg, generator)))
    inv_scale = 1.0 / (1.0 + uniform(n, aug.scale, generator))
    # One pixel is 2 / 28 in these coordinates.
    tx, ty = (uniform(n, aug.translate_px, generator) * 2 / IMAGE_SIZE for _ in range(2))
    cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    return torch.stack(
        [
            torch.stack([cos, -sin + shear * cos, tx], dim=1),
            torch.stack([sin, cos + shear * sin, ty], dim=1),
        ],
        dim=1,
    )


def random_warp(images: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Apply an independent random affine transform to every image of a batch, plus the
    elastic distortion when ``aug.elastic_px > 0``, in one bilinear resampling.

    Args:
        images: (N, 1, 28, 28) float32, background 0 (so the padding that comes in is blank).

    Returns:
        (N, 1, 28, 28) float32, bilinearly resampled.
    """
    n = images.shape[0]
    theta = affine_theta(n, aug, generator).to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if aug.elastic_px > 0:
        grid = grid + elastic_offsets(n, aug, generator).to(images.device)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def elastic_offsets(n: int, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """(n, 28, 28, 2) smooth random displacements in ``affine_grid`` units, at most about
    ``aug.elastic_px`` pixels: uniform noise on a coarse lattice, upsampled bicubically (cheaper
    than blurring full-resolution noise as Simard et al. 2003 do, with the same kind of field)."""
    g = aug.elastic_grid
    coarse = torch.rand(n, 2, g, g, generator=generator) * 2 - 1
    field = F.interpolate(coarse, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1) * (aug.elastic_px * 2 / IMAGE_SIZE)


def random_stroke_width(images: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Make the strokes of a random ``aug.stroke`` share of the images thinner or thicker.

    Erosion/dilation is a 3x3 min/max filter at twice the resolution, so a stroke changes by
    about half a pixel on each side at 28x28. Input and output: (N, 1, 28, 28) in [0, 1].
    """
    n = images.shape[0]
    choice = torch.rand(n, generator=generator).to(images.device)
    thicker = choice < aug.stroke / 2
    thinner = (choice >= aug.stroke / 2) & (choice < aug.stroke)
    # Only the chosen images are resampled: the others must stay exactly as they are (the
    # 2x up- and down-sampling alone would blur them).
    out = images.clone()
    for chosen, sign in ((thicker, 1.0), (thinner, -1.0)):  # dilation = max filter; erosion = min
        if chosen.any():
            big = F.interpolate(images[chosen], scale_factor=2, mode="bilinear", align_corners=False)
            out[chosen] = F.avg_pool2d(sign * F.max_pool2d(sign * big, 3, stride=1, padding=1), 2)
    return out


def random_ink(images: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Make the ink of a random ``aug.ink`` share of the images fainter in places: each chosen
    image times a smooth field in [``aug.ink_min``, 1]. Input and output: (N, 1, 28, 28) in [0, 1]."""
    n = images.shape[0]
    chosen = (torch.rand(n, generator=generator) < aug.ink).to(images.device)
    coarse = aug.ink_min + (1 - aug.ink_min) * torch.rand(n, 1, 3, 3, generator=generator)
    field = F.interpolate(coarse, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=True)
    field = field.clamp(aug.ink_min, 1.0).to(images.device)
    return torch.where(chosen[:, None, None, None], images * field, images)


def augment(images: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """The training augmentation: ink intensity, stroke width, then ``random_warp`` (affine +
    elastic).

    Args:
        images: (N, 1, 28, 28) float32 in [0, 1], background 0.

    Returns:
        (N, 1, 28, 28) float32 in [0, 1].
    """
    if aug.ink > 0:
        images = random_ink(images, aug, generator)
    if aug.stroke > 0:
        images = random_stroke_width(images, aug, generator)
    return random_warp(images, aug, generator).clamp(0.0, 1.0)


def augmented_images(images: torch.Tensor, seed: int = AUGMENT_SEED, preset: str = "affine") -> torch.Tensor:
    """Every image under its own random transform of ``AUGMENT_PRESETS[preset]``, the same ones
    in every run.

    The transforms depend on N as well as the seed (``augment`` draws each parameter for the
    whole batch in turn), so ``evaluate`` augments the full test split and then keeps the
    first ``limit`` images: a subset's augmented images are those of the full set.

    Args:
        images: (N, 28, 28) uint8 or float, 0..255, ink = 255.
        seed: seed of the ``torch.Generator`` drawing the transforms.
        preset: a key of ``AUGMENT_PRESETS``: "affine" (the evaluation's "augmented" test set)
            or "draw" (what training does; the calibration split of ``trainer.uncertainty``).

    Returns:
        (N, 28, 28) float32 in 0..255, bilinearly resampled (``augment``).

    Raises:
        KeyError: an unknown preset.
    """
    generator = torch.Generator().manual_seed(seed)
    unit = images.float().unsqueeze(1) / 255.0  # training augments images in [0, 1]
    return (augment(unit, AUGMENT_PRESETS[preset], generator) * 255.0).clamp(0, 255).squeeze(1)
