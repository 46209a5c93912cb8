"""Helpers both synthetic styles draw and pick with (``synthetic`` and ``synthetic_household``)."""
import numpy as np
from PIL import Image

NULL = "null"   # a missing text field, as the release writes it


def maybe_null(rng, text, p_null):
    return NULL if rng.random() < p_null else text


def caption_or_title(rng, caption, title, p_null=0.4):
    """(caption, title) of a video text with one of the two, drawn at random, kept for sure and the
    other missing with probability ``p_null``: a video always has one of them."""
    if rng.random() < 0.5:
        return caption, maybe_null(rng, title, p_null)
    return maybe_null(rng, caption, p_null), title


def pick(rng, options, k=None):
    """One option, or k distinct ones."""
    if k is None:
        return options[rng.integers(len(options))]
    return [options[i] for i in rng.choice(len(options), size=k, replace=False)]


def paste(canvas, rgb, alpha, left, top):
    """Alpha-blend a sprite into canvas (float, in place), clipping at the borders."""
    height, width = alpha.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, canvas.shape[0]), min(left + width, canvas.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    a = alpha[y0 - top:y1 - top, x0 - left:x1 - left, None]
    region = canvas[y0:y1, x0:x1]
    region[:] = region * (1 - a) + rgb[y0 - top:y1 - top, x0 - left:x1 - left] * a


def to_image(array) -> Image.Image:
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")
