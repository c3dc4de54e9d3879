"""The built-in demo world: procedurally drawn shapes, generated offline from a seed.

Freeze Lab must work on a machine with no network, and transfer learning needs
two related tasks: a large one to pretrain a backbone on and a small one with
*other* classes to transfer it to. So we draw them ourselves:

- ``demo-source``: circle, square, triangle, star, cross, ring (1000 per class);
- ``demo-target``: pentagon, diamond, star4 (a four-pointed star), tshape
  (80 per class: by default 16 held out for test, 13 to validate on and 51 to train on);
- ``demo-shift`` and ``demo-flip``: the source's six classes under a distribution shift, 80 per
  class (`DESCRIPTIONS`): washed-out images (input level), or permuted labels (output level).
  Which layers a shift asks to fine-tune is what a surgical sweep shows.

Every image is 64x64 RGB: a light shape on a darker, noisy background with thin
clutter lines. Colour, background, clutter, noise, area, position and
rotation are drawn from the *same* distributions for every class, and each
shape is scaled to a sampled *area* (not a radius), so classes differ only by
shape: features of a random network cannot separate them by colour or ink
statistics, while features learned on the source shapes (edges, corners,
angles) transfer to the target shapes.

The target classes reuse the source's visual vocabulary in new combinations
(a four-pointed star: a star's points with a square's symmetry; a T: a cross
with one arm missing; a diamond: a square's straight edges at other angles; a
pentagon: corners between a square's and a circle's), so a backbone pretrained
on the source separates them with a linear head (about 85-90% on ResNet-18 at
64 px), while a random backbone stays near chance (25-35%). The target had a
hexagon and 30 images per class before: beside a pentagon it is nearly a
circle at this size, and a 24-image validation split made the measurement
mostly noise (one image = 4 points). Images are written once, as PNGs in the
ImageFolder layout, into a temporary folder that is renamed into place when
complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 3  # bump when the drawing changes: old folders are then regenerated (3: demo-shift washed out)
DEMO_SEED = 0  # the demo world is fixed; the run seed only changes the train/val split
IMAGE_SIZE = 64
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: clean, anti-aliased edges
MARKER = "demo.json"  # written last; its presence means the folder is complete

Progress = Callable[[int, int, str], None]


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    """Vertices of a regular n-gon (unit circumradius by default), first vertex up."""
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    outer = _regular(points)
    inner_pts = _regular(points, inner, phase=-math.pi / 2 + math.pi / points)
    return [p for pair in zip(outer, inner_pts) for p in pair]


def _cross(arm: float = 0.32) -> list[tuple[float, float]]:
    a = arm
    return [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]


def _tee(bar: float = 0.75, arm: float = 0.19, height: float = 1.3) -> list[tuple[float, float]]:
    """A T: a bar of half-width `bar` and thickness 2 * `arm` on a stem; centred on its bounding box."""
    pts = [(-bar, 0), (bar, 0), (bar, 2 * arm), (arm, 2 * arm), (arm, height), (-arm, height), (-arm, 2 * arm), (-bar, 2 * arm)]
    return [(x, y - height / 2) for x, y in pts]


# Each shape is a list of polygons: the first is filled, the rest are cut out (holes).
SHAPES: dict[str, list[list[tuple[float, float]]]] = {
    "circle": [_regular(48)],
    "square": [_regular(4)],
    "triangle": [_regular(3)],
    "star": [_star()],
    "cross": [_cross()],
    "ring": [_regular(48), _regular(48, 0.58)],
    "pentagon": [_regular(5)],
    "diamond": [[(0, -1), (0.58, 0), (0, 1), (-0.58, 0)]],
    "star4": [_star(4, 0.4)],
    "tshape": [_tee()],
}

# name -> (classes, standard images per class)
SOURCE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
WORLDS: dict[str, tuple[tuple[str, ...], int]] = {
    "demo-source": (SOURCE_CLASSES, 1000),
    "demo-target": (("pentagon", "diamond", "star4", "tshape"), 80),
    "demo-shift": (SOURCE_CLASSES, 80),  # the source's classes, washed out: an input-level shift
    "demo-flip": (SOURCE_CLASSES, 80),  # the source's images, labels moved one class on: an output-level shift
}
# demo-shift: every pixel value v (0-255) becomes SHIFT_CONTRAST * v + SHIFT_LIGHT: low contrast, lighter.
# A global affine change of the input: what the first BatchNorm normalises away once it may adapt.
SHIFT_CONTRAST, SHIFT_LIGHT = 0.35, 120.0
DESCRIPTIONS = {
    "demo-source": "6 shapes, many images: the task the demo backbone is pretrained on.",
    "demo-target": "4 new shapes, few images: new classes built from the source's edges and corners.",
    "demo-shift": "The source's 6 shapes washed out (every pixel value v becomes 0.35·v + 120: low contrast, "
                  "lighter): the same classes and labels, but the input statistics a network's first layer and its "
                  "BatchNorm see have changed (an input-level shift). Tuning the stem lets that BatchNorm normalise "
                  "the change away; a frozen stem passes distorted features on to every later stage.",
    "demo-flip": "The source's 6 shapes drawn as in the source, but every folder holds the next class's shape "
                 "(circle holds squares, ..., ring holds circles): the same images, permuted labels (an "
                 "output-level shift, as the CIFAR-Flip of Lee et al., 2023).",
}


def washed_out(img: Image.Image) -> Image.Image:
    """demo-shift's change of every pixel value: v -> SHIFT_CONTRAST * v + SHIFT_LIGHT."""
    values = np.asarray(img, dtype=np.float32) * SHIFT_CONTRAST + SHIFT_LIGHT
    return Image.fromarray(values.clip(0, 255).astype(np.uint8))


def draw_member(world: str, c: int, rng: np.random.Generator) -> Image.Image:
    """Image of class index `c` of `world`: its own shape, except in the shifted worlds (see `DESCRIPTIONS`)."""
    classes = WORLDS[world][0]
    if world == "demo-flip":
        return draw_image(rng, classes[(c + 1) % len(classes)])
    img = draw_image(rng, classes[c])
    if world == "demo-shift":
        img = washed_out(img)
    return img

# Difficulty knobs; the same distributions for every class.
AREA_RANGE = (0.15, 0.30)  # shape area as a share of the image (long shapes shrink to fit)
ROTATION = math.pi  # rotation drawn uniformly in [-ROTATION, ROTATION]
NOISE_STD = (4.0, 14.0)  # per-image Gaussian pixel noise (0-255 scale)
CLUTTER_LINES = (2, 6)  # thin random lines behind the shape: [low, high)
CLUTTER_DOTS = (0, 4)  # small random dots behind the shape: [low, high)
LINE_OVER_SHAPE = 0.3  # chance that one more thin line crosses the shape
CONTRAST = 100.0  # minimum brightness difference between shape and background (0-255)
LIGHT_ON_DARK = True  # shape always brighter than the background


def _polygon_area(points: list[tuple[float, float]]) -> float:
    """Shoelace formula."""
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1])))


def _unit_area(polys: list[list[tuple[float, float]]]) -> float:
    return _polygon_area(polys[0]) - sum(_polygon_area(p) for p in polys[1:])


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A background and a fill colour at least CONTRAST apart in brightness.

    With LIGHT_ON_DARK the shape is always the brighter one: the same for every
    class, and it spares a network trained from scratch the work of learning
    contrast-polarity invariance in its first few hundred steps.
    """
    bg = rng.uniform(0, 255, 3)
    for _ in range(100):
        fg = rng.uniform(0, 255, 3)
        diff = _luma(fg) - _luma(bg)
        if (diff if LIGHT_ON_DARK else abs(diff)) >= CONTRAST:
            return bg, fg
        if LIGHT_ON_DARK:
            bg = bg * 0.8  # darken until a bright enough fill exists
    return bg, 255.0 - bg  # practically unreachable; keep the image valid anyway


def _background(rng: np.random.Generator, bg: np.ndarray) -> Image.Image:
    """A flat colour with a soft linear gradient and a few thin clutter lines and dots."""
    s = IMAGE_SIZE
    yy, xx = np.mgrid[0:s, 0:s] / (s - 1) - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle))[..., None] * rng.uniform(0, 50)
    img = Image.fromarray(np.clip(bg + ramp, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(*CLUTTER_LINES))):
        x0, y0, x1, y1 = rng.uniform(0, s, 4)
        draw.line([(x0, y0), (x1, y1)], fill=tuple(int(c) for c in rng.uniform(0, 255, 3)), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(*CLUTTER_DOTS))):
        x, y, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(1, 2.5)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.uniform(0, 255, 3)))
    return img


def _shape_mask(rng: np.random.Generator, polys: list[list[tuple[float, float]]]) -> np.ndarray:
    """An anti-aliased [0, 1] mask of the shape at a sampled area, rotation and position."""
    s, k = IMAGE_SIZE, SUPERSAMPLE
    area = rng.uniform(*AREA_RANGE) * s * s
    scale = math.sqrt(area / _unit_area(polys))
    theta = rng.uniform(-ROTATION, ROTATION)
    c, si = math.cos(theta), math.sin(theta)
    rotated = [[(scale * (x * c - y * si), scale * (x * si + y * c)) for x, y in poly] for poly in polys]
    margin = 1.0
    extent = max(max(p) - min(p) for p in ([x for x, _ in rotated[0]], [y for _, y in rotated[0]]))
    if extent > s - 2 * margin:  # a long shape at a large area: shrink it to fit
        shrink = 0.999 * (s - 2 * margin) / extent
        rotated = [[(x * shrink, y * shrink) for x, y in poly] for poly in rotated]
    xs = [x for x, _ in rotated[0]]
    ys = [y for _, y in rotated[0]]
    cx = rng.uniform(margin - min(xs), s - margin - max(xs))
    cy = rng.uniform(margin - min(ys), s - margin - max(ys))
    mask = Image.new("L", (s * k, s * k), 0)
    draw = ImageDraw.Draw(mask)
    for i, poly in enumerate(rotated):
        draw.polygon([((x + cx) * k, (y + cy) * k) for x, y in poly], fill=255 if i == 0 else 0)
    return np.asarray(mask.resize((s, s), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255.0


def draw_image(rng: np.random.Generator, shape: str) -> Image.Image:
    """One demo image of `shape`; everything but the shape is drawn from class-independent distributions."""
    bg, fg = _colours(rng)
    base = np.asarray(_background(rng, bg), dtype=np.float32)
    mask = _shape_mask(rng, SHAPES[shape])
    shade = fg + rng.normal(0, 6, (IMAGE_SIZE, IMAGE_SIZE, 3))  # a little texture inside the shape
    img = base * (1 - mask) + shade * mask
    img += rng.normal(0, rng.uniform(*NOISE_STD), img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < LINE_OVER_SHAPE:  # sometimes a clutter line crosses the shape too
        draw = ImageDraw.Draw(out)
        x0, y0, x1, y1 = rng.uniform(0, IMAGE_SIZE, 4)
        draw.line([(x0, y0), (x1, y1)], fill=tuple(int(c) for c in rng.uniform(0, 255, 3)), width=1)
    return out


def is_complete(root: Path, world: str, per_class: int) -> bool:
    """Whether `root` holds a finished demo folder made by this generator version."""
    try:
        meta = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("version") == GENERATOR_VERSION and meta.get("world") == world and meta.get("per_class") == per_class


def generate(world: str, root: Path, per_class: int | None = None, *, progress: Progress | None = None) -> Path:
    """Draw `world` (a name of `WORLDS`) into `root` once; return `root`.

    Deterministic: image i of class c is drawn from a generator seeded with
    (DEMO_SEED, world, c, i), so a given size always gives the same pixels and
    a smaller world is a prefix of a larger one. The folder appears atomically
    (built under a temporary name beside it, then renamed), so a crash or a
    concurrent generator never leaves a half-written dataset behind.
    """
    classes, standard = WORLDS[world]
    per_class = per_class or standard
    if is_complete(root, world, per_class):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{root.name}-", dir=root.parent))
    try:
        total, done = len(classes) * per_class, 0
        world_id = list(WORLDS).index(world)
        for c, name in enumerate(classes):
            (tmp / name).mkdir()
            for i in range(per_class):
                rng = np.random.default_rng([DEMO_SEED, world_id, c, i])
                draw_member(world, c, rng).save(tmp / name / f"{name}_{i:05d}.png", compress_level=1)
                done += 1
                if progress and (done % 200 == 0 or done == total):
                    progress(done, total, f"Drawing {world}: {done}/{total} images")
        meta = {"version": GENERATOR_VERSION, "world": world, "per_class": per_class, "classes": list(classes)}
        (tmp / MARKER).write_text(json.dumps(meta))
        if root.exists():  # an outdated or broken earlier folder
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if not is_complete(root, world, per_class):  # not just a concurrent generator winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
