"""A learnable synthetic ship set written as real JPEG files in the seed's layout.

Each class has its own silhouette and palette (a container ship's stacked boxes, a warship's
pointed grey hull, a carrier's long flat deck, a cruise liner's white tiers, a tanker's low black
hull), drawn at a random position, length, orientation and sea tone, with pixel noise and JPEG
compression, so a model has to learn shapes and colours rather than memorise pixels. Writing real
files means every run and test goes through the same loading path as the real data set.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mpcore.data.ships import CLASS_NAMES, csv_path, images_dir

MARKER = "mpbench-synthetic.json"

Box = tuple[float, float, float, float]


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = 18) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _draw_ship(draw: ImageDraw.ImageDraw, label: int, hull: Box, rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = hull
    length, height = x1 - x0, y1 - y0
    if label == 0:  # Cargo: red hull, stacked multicoloured containers
        draw.rectangle(hull, fill=_jitter(rng, (170, 40, 30)))
        for k in range(6):
            cx = x0 + length * (0.1 + 0.13 * k)
            colour = _jitter(rng, [(30, 110, 200), (230, 160, 20), (40, 160, 60)][k % 3], 25)
            draw.rectangle((cx, y0 - height * 1.1, cx + length * 0.11, y0), fill=colour)
    elif label == 1:  # Military: grey hull with a pointed bow and a small mast
        grey = _jitter(rng, (120, 125, 130), 10)
        draw.polygon([(x0, y0), (x1 + length * 0.15, y0), (x1, y1), (x0, y1)], fill=grey)
        draw.rectangle((x0 + length * 0.4, y0 - height * 0.9, x0 + length * 0.55, y0), fill=grey)
        draw.line(
            (x0 + length * 0.48, y0 - height * 2.0, x0 + length * 0.48, y0), fill=grey, width=2
        )
    elif label == 2:  # Carrier: long flat dark deck, yellow centre line, island to one side
        draw.rectangle(
            (x0 - length * 0.1, y0, x1 + length * 0.1, y1), fill=_jitter(rng, (55, 60, 70), 8)
        )
        draw.line((x0, y0 + 1, x1, y0 + 1), fill=_jitter(rng, (240, 220, 40)), width=2)
        draw.rectangle(
            (x0 + length * 0.75, y0 - height * 1.2, x0 + length * 0.85, y0), fill=(80, 85, 95)
        )
    elif label == 3:  # Cruise: white tall tiers with rows of windows
        for tier in range(3):
            inset = length * 0.08 * tier
            top = y0 - height * 0.8 * tier
            draw.rectangle(
                (x0 + inset, top - height * 0.8, x1 - inset, top),
                fill=_jitter(rng, (245, 245, 240), 8),
            )
            for wx in np.arange(x0 + inset + 2, x1 - inset - 2, max(3.0, length / 14)):
                draw.point((wx, top - height * 0.4), fill=(20, 40, 90))
        draw.rectangle(hull, fill=_jitter(rng, (235, 235, 235), 8))
    else:  # Tankers: low black hull with a red waterline and thin deck pipes
        draw.rectangle(hull, fill=_jitter(rng, (20, 20, 22), 6))
        draw.rectangle((x0, y1 - height * 0.3, x1, y1), fill=_jitter(rng, (160, 20, 20)))
        draw.line(
            (x0 + length * 0.1, y0 - 2, x1 - length * 0.2, y0 - 2), fill=(200, 180, 60), width=1
        )
        draw.rectangle(
            (x1 - length * 0.15, y0 - height * 1.0, x1 - length * 0.05, y0), fill=(235, 235, 235)
        )


def render_ship(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one ship of class ``label`` (0..4) on a sea-and-sky background."""
    horizon = int(size * rng.uniform(0.3, 0.45))
    sky = np.array(_jitter(rng, (150, 190, 225), 25), dtype=np.float32)
    sea = np.array(_jitter(rng, (30, 80, 120), 25), dtype=np.float32)
    pixels = np.empty((size, size, 3), dtype=np.float32)
    pixels[:horizon] = sky
    pixels[horizon:] = sea
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    length = size * rng.uniform(0.45, 0.7)
    height = size * rng.uniform(0.07, 0.11)
    x0 = rng.uniform(size * 0.08, size - length - size * 0.12)
    y0 = rng.uniform(horizon + height, size * 0.8)
    _draw_ship(draw, label, (x0, y0, x0 + length, y0 + height), rng)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 6.0, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_synthetic_ships(
    root: str | Path, per_class: int = 120, image_size: int = 96, seed: int = 0
) -> Path:
    """Write ``per_class`` images of each class under ``ROOT/train`` and return ``root``.

    Reuses an existing set written with the same parameters (recorded in ``MARKER``).
    """
    if per_class < 2:
        raise ValueError(f"per_class must be at least 2, got {per_class}")
    root = Path(root)
    params = {"per_class": per_class, "image_size": image_size, "seed": seed, "version": 1}
    marker = root / MARKER
    if marker.is_file() and csv_path(root).is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return root
        except (OSError, ValueError):
            pass
    folder = images_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(per_class * len(CLASS_NAMES)):
        label = number % len(CLASS_NAMES)
        name = f"{number:06d}.jpg"
        render_ship(label, image_size, rng).save(
            folder / name, format="JPEG", quality=int(rng.integers(80, 96))
        )
        rows.append((name, label + 1))
    with open(csv_path(root), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("image", "category"))
        writer.writerows(rows)
    marker.write_text(json.dumps(params))
    return root


def generated_batch(
    preprocess: Callable[[np.ndarray], np.ndarray], image_size: int, batch_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A batch of synthetic ships (classes in turn) at ``image_size``, through ``preprocess``
    (a model's preprocessing), with their labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(batch_size, dtype=np.int32) % len(CLASS_NAMES)
    images = np.stack([np.asarray(render_ship(int(label), image_size, rng)) for label in labels])
    return preprocess(images.astype(np.float32)), labels
