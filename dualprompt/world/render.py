"""Deterministic rendering of an `ObjectSpec` into a small RGB image (numpy + PIL).

Drawing happens at twice the output resolution and is box-downsampled, so edges and patterns
are anti-aliased. All randomness (exact position, radius, rotation, color jitter, pattern
phase, background texture, noise) comes from the caller's `numpy.random.Generator`, so the
same generator state gives the same bytes.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .spec import BACKGROUNDS, COLORS, ObjectSpec, RenderStyle

SUPERSAMPLE = 2
# Object radius as a fraction of the image side, and how far a named position moves it.
RADIUS = {"small": 0.20, "large": 0.32}
OFFSET = {"small": 0.24, "large": 0.15}
POSITION_DIRECTIONS = {"center": (0, 0), "left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of circumradius ~r centred at (cx, cy), rotated by angle (radians)."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.pi / 4 + np.arange(4) * np.pi / 2]
        pts = [(x * 0.95, y * 0.95) for x, y in pts]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in -np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
        pts = [(x * 1.1, y * 1.1 + 0.12) for x, y in pts]
    elif shape == "diamond":
        pts = [(0, -1.05), (0.7, 0), (0, 1.05), (-0.7, 0)]
    elif shape == "hexagon":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(6) * np.pi / 3]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.1 if k % 2 == 0 else 0.5
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        w = 0.38
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
               (-1, -w), (-w, -w)]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _shape_mask(shape: str, side: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)
    return np.asarray(mask) > 127


def _pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray, phase: float) -> np.ndarray:
    """Where the marking color goes, in object-local coordinates (u, v in units of radius)."""
    if pattern == "plain":
        return np.zeros(u.shape, dtype=bool)
    if pattern == "striped":
        return np.floor(v * 2.6 + phase) % 2 == 0
    if pattern == "dotted":
        pu, pv = (u * 1.9 + phase) % 1.0 - 0.5, (v * 1.9 + phase) % 1.0 - 0.5
        return pu * pu + pv * pv < 0.27 ** 2
    if pattern == "checkered":
        return (np.floor(u * 1.7 + phase) + np.floor(v * 1.7 + phase)) % 2 == 0
    if pattern == "ringed":
        return np.floor(np.sqrt(u * u + v * v) * 3.2 + 0.5 * phase) % 2 == 1
    raise ValueError(f"unknown pattern {pattern!r}")


def body_color(obj: ObjectSpec, rng: np.random.Generator) -> np.ndarray:
    """The object's RGB color: base color, mixed toward white (light) or black (dark), jittered."""
    base = np.array(COLORS[obj.color], dtype=np.float64)
    target = 255.0 if obj.shade == "light" else 0.0
    mix = 0.38 if obj.shade == "light" else 0.32
    return np.clip(base * (1 - mix) + target * mix + rng.normal(0, 6, 3), 0, 255)


@functools.lru_cache(maxsize=4)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
    return ys, xs


def _background(obj: ObjectSpec, style: RenderStyle, side: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(BACKGROUNDS[obj.background], dtype=np.float32) + rng.normal(0, 5, 3).astype(np.float32)
    canvas = np.broadcast_to(base, (side, side, 3)).copy()
    if style.gradient > 0:
        theta = rng.uniform(0, 2 * np.pi)
        ys, xs = _grid(side)
        ramp = (xs * math.cos(theta) + ys * math.sin(theta)) / (side - 1) - 0.5 * (math.cos(theta) + math.sin(theta))
        canvas += style.gradient * ramp[..., None]  # (side, side, 1), ramp in [-0.71, 0.71]
    if style.texture > 0:
        # Mostly-luminance blobs with a little chroma, so the background keeps its hue.
        coarse = rng.normal(0, 1, (5, 5, 1)) + 0.35 * rng.normal(0, 1, (5, 5, 3))
        blobs = Image.fromarray(((coarse + 4) * 32).clip(0, 255).astype(np.uint8)).resize(
            (side, side), Image.BICUBIC)
        canvas += style.texture * (np.asarray(blobs, dtype=np.float32) / 32.0 - 4)
    return canvas


def render(obj: ObjectSpec, style: RenderStyle, rng: np.random.Generator, image_size: int = 64) -> Image.Image:
    """Render one object as an RGB PIL image of side `image_size`."""
    side = image_size * SUPERSAMPLE
    dx, dy = POSITION_DIRECTIONS[obj.position]
    r = RADIUS[obj.size] * side * rng.uniform(0.92, 1.08)
    cx = side / 2 + (dx * OFFSET[obj.size] + rng.uniform(-0.03, 0.03)) * side
    cy = side / 2 + (dy * OFFSET[obj.size] + rng.uniform(-0.03, 0.03)) * side
    angle = math.radians(rng.uniform(-style.max_rotation, style.max_rotation))
    phase = rng.uniform(0, 1)

    canvas = _background(obj, style, side, rng)
    body = body_color(obj, rng)
    luminance = body @ np.array([0.299, 0.587, 0.114])
    marking = np.full(3, 25.0, np.float32) if luminance > 135 else np.full(3, 240.0, np.float32)

    inside = _shape_mask(obj.shape, side, cx, cy, r, angle)
    canvas[inside] = body
    # The pattern is computed inside the object's bounding box only (the costly part).
    y0, y1 = max(int(cy - 1.2 * r), 0), min(int(cy + 1.2 * r) + 1, side)
    x0, x1 = max(int(cx - 1.2 * r), 0), min(int(cx + 1.2 * r) + 1, side)
    ys, xs = _grid(side)
    ys, xs = ys[y0:y1, x0:x1] - cy, xs[y0:y1, x0:x1] - cx
    c, s = math.cos(-angle), math.sin(-angle)
    u = (xs * c - ys * s) / r  # object-local coordinates, rotating with the object
    v = (xs * s + ys * c) / r
    box = canvas[y0:y1, x0:x1]
    box[inside[y0:y1, x0:x1] & _pattern_mask(obj.pattern, u, v, phase)] = marking

    if style.tint != (1.0, 1.0, 1.0):
        canvas *= np.asarray(style.tint, dtype=np.float32)
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).resize((image_size, image_size), Image.BOX)
    if style.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(style.blur))
    if style.noise_std > 0:
        noise = rng.standard_normal((image_size, image_size, 3), dtype=np.float32) * style.noise_std
        noisy = np.asarray(image, dtype=np.float32) + noise
        image = Image.fromarray(noisy.clip(0, 255).round().astype(np.uint8))
    return image
