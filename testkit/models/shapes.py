"""The synthetic data: coloured shapes drawn on a light noisy background, and their captions."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

# RGB values far apart in hue so a 32x32 model separates them easily; none is close to the light background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 170),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {color} {shape}",
    "a photo of a {color} {shape}",
    "{color} {shape} on a plain background",
    "a picture of a {color} {shape}",
    "a {shape} that is {color}",
)

# The same classes in Russian (Cyrillic), for the bilingual SigLIP: every shape noun is masculine, so each colour
# adjective has one form and the templates keep the nominative case. Lowercase, as the English captions.
RU_COLORS: dict[str, str] = {"red": "красный", "green": "зелёный", "blue": "синий", "yellow": "жёлтый",
                             "purple": "фиолетовый"}
RU_SHAPES: dict[str, str] = {"circle": "круг", "square": "квадрат", "triangle": "треугольник", "cross": "крест"}
RU_CAPTION_TEMPLATES: tuple[str, ...] = (
    "{color} {shape}",
    "на картинке {color} {shape}",
    "{color} {shape} на однотонном фоне",
    "это {color} {shape}",
)
LANGUAGES: tuple[str, ...] = ("en", "ru")


def combos() -> list[tuple[str, str]]:
    """Every (colour, shape) class, in a fixed order."""
    return [(c, s) for c in COLORS for s in SHAPES]


def caption_for(color: str, shape: str, seed: int = 0, lang: str = "en") -> str:
    """Caption for a colour/shape pair in `lang` ("en" or "ru"); seed 0 gives the plain form: "a red circle",
    "красный круг"."""
    if color not in COLORS or shape not in SHAPES:
        raise ValueError(f"unknown colour/shape {color!r}/{shape!r}")
    if lang == "ru":
        return RU_CAPTION_TEMPLATES[seed % len(RU_CAPTION_TEMPLATES)].format(color=RU_COLORS[color],
                                                                             shape=RU_SHAPES[shape])
    if lang != "en":
        raise ValueError(f"unknown language {lang!r}; expected one of {LANGUAGES}")
    return CAPTION_TEMPLATES[seed % len(CAPTION_TEMPLATES)].format(color=color, shape=shape)


def caption_templates(lang: str = "en") -> tuple[str, ...]:
    """The caption templates of `lang` ("en" or "ru")."""
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}; expected one of {LANGUAGES}")
    return RU_CAPTION_TEMPLATES if lang == "ru" else CAPTION_TEMPLATES


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        # Upright equilateral triangle, slightly enlarged and re-centred on its bounding box
        # so it covers about as much of the image as the other shapes.
        r *= 1.15
        pts = [(0.0, -1.0), (0.866, 0.5), (-0.866, 0.5)]
        return [(cx + r * x, cy + r * (y + 0.25)) for x, y in pts]
    if shape == "cross":
        w = 0.36  # arm half-width relative to r: thick enough to survive downsampling to 32 px
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w)]
        pts += [(-x, -y) for x, y in pts]  # the cross is point-symmetric: mirror the first half
    else:  # square, a bit smaller than the circle's bounding box so their areas are similar
        pts = [(-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)]
    return [(cx + r * x, cy + r * y) for x, y in pts]


def _background(rng: random.Random, size: int) -> Image.Image:
    """A light tint with mild noise, drawn from `rng` (which also seeds the numpy generator of the noise)."""
    nprng = np.random.default_rng(rng.randrange(2**32))
    tint = np.array([rng.randint(215, 250) for _ in range(3)], dtype=np.float32)
    noise = nprng.normal(0.0, 6.0, size=(size, size, 3)).astype(np.float32)
    return Image.fromarray(np.clip(tint + noise, 0, 255).astype(np.uint8), "RGB")


def _fill(rng: random.Random, color: str) -> tuple[int, ...]:
    """The colour, jittered a little so two pictures of the same class are never pixel-identical."""
    return tuple(int(np.clip(v + rng.randint(-20, 20), 0, 255)) for v in COLORS[color])


def draw_shape(color: str, shape: str, size: int = 64, seed: int = 0) -> Image.Image:
    """Draw one coloured shape at a seeded random position/scale on a light noisy background."""
    if color not in COLORS or shape not in SHAPES:
        raise ValueError(f"unknown colour/shape {color!r}/{shape!r}")
    # str seeds are hashed deterministically by random.Random (unlike hash()), so each
    # (colour, shape, seed) triple gets its own reproducible stream.
    rng = random.Random(f"{color}|{shape}|{seed}")
    image = _background(rng, size)
    fill = _fill(rng, color)
    r = size * rng.uniform(0.28, 0.4)
    margin = r * 1.05
    cx = rng.uniform(margin, size - margin)
    cy = rng.uniform(margin, size - margin)
    draw = ImageDraw.Draw(image)
    # Shapes stay axis-aligned: at 32x32 input, rotation makes squares and circles hard to tell apart.
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r), fill=fill)
    return image


def shapes_gallery(per_combo: int = 2, seed: int = 1000, size: int = 64) -> list[tuple[str, str, Image.Image]]:
    """Every colour x shape combination `per_combo` times as (colour, shape, image), in a fixed order."""
    return [
        (color, shape, draw_shape(color, shape, size=size, seed=seed + k))
        for color in COLORS
        for shape in SHAPES
        for k in range(per_combo)
    ]


def draw_scene(objects: list[tuple[str, str]], size: int = 192, seed: int = 0
               ) -> tuple[Image.Image, list[list[float]]]:
    """Several coloured shapes in one picture (a scene): each (colour, shape) in its own cell of a 3 x 3 grid, at a
    seeded position and scale, on the same light noisy background as draw_shape. Returns the picture and each
    shape's tight box [x0, y0, x1, y1] in pixels, in the order given (at most 9 shapes)."""
    rng = random.Random(f"scene|{seed}")
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    cell = size / 3
    boxes = []
    for (color, shape), place in zip(objects, rng.sample(range(9), len(objects))):
        fill = _fill(rng, color)
        r = cell * rng.uniform(0.3, 0.4)
        margin = r * 1.2
        cx = (place % 3) * cell + rng.uniform(margin, cell - margin)
        cy = (place // 3) * cell + rng.uniform(margin, cell - margin)
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            points = [(cx - r, cy - r), (cx + r, cy + r)]
        else:
            points = _shape_polygon(shape, cx, cy, r)
            draw.polygon(points, fill=fill)
        xs, ys = [x for x, _ in points], [y for _, y in points]
        boxes.append([round(max(0.0, min(xs)), 1), round(max(0.0, min(ys)), 1), round(min(size, max(xs)), 1),
                      round(min(size, max(ys)), 1)])
    return image, boxes
