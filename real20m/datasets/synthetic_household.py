"""The "household" style of the synthetic generator: a second dataset family, designed apart from
the "products" style so that a recipe tuned on one can be checked on the other.

What differs from the products style (clothing on plain or cluttered squares):

    objects      ten household kinds (mug, bottle, lamp, chair, clock, vase, umbrella, kettle,
                 book, plant pot), each drawn from several primitives
    attributes   colour (10 muted shades), surface (5: plain, gradient, ripple, twill, marble)
                 and finish (matte, gloss, metallic), besides the kind
    goods        portrait images (4:5), a textured backdrop half the time, a drop shadow,
                 the object off-centre and slightly rotated
    videos       landscape frames (16:9) of a room, 3 to ``frames_per_video`` frames per video,
                 a hand-like occluder, blur and exposure drift, and about one frame in four
                 that does not show the object at all (at least one frame always does)
    text         other templates; titles sometimes drop an attribute or use a synonym; video
                 caption and title are each null about two times in three, both at once often

Queries are attribute combinations like "亮面大理石纹藏青马克杯"; test queries are held-out
combinations of values seen in training, as in the products style. Every draw comes from the
item's own random stream, so the output is byte-identical for a seed.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from real20m.datasets.synthetic_drawing import paste, pick, to_image

COLOURS = {
    "藏青": (28, 42, 92),
    "墨绿": (32, 84, 52),
    "酒红": (122, 24, 44),
    "姜黄": (214, 158, 32),
    "雾蓝": (118, 150, 186),
    "奶茶": (192, 152, 116),
    "薄荷": (148, 218, 188),
    "炭灰": (72, 72, 78),
    "珊瑚": (244, 112, 92),
    "香芋紫": (168, 138, 202),
}
# Another word a seller or a video may use for the same colour.
COLOUR_SYNONYMS = {
    "藏青": "深蓝", "墨绿": "深绿", "酒红": "暗红", "姜黄": "土黄", "雾蓝": "灰蓝",
    "奶茶": "浅棕", "薄荷": "浅绿", "炭灰": "深灰", "珊瑚": "橘粉", "香芋紫": "浅紫",
}
SURFACES = ("素面", "渐变", "波纹", "斜纹", "大理石纹")
FINISHES = ("哑光", "亮面", "金属")
KINDS = ("马克杯", "水瓶", "台灯", "椅子", "挂钟", "花瓶", "雨伞", "水壶", "笔记本", "花盆")

# The attribute words in English (--english).
ENGLISH = {
    "藏青": "navy", "墨绿": "forest green", "酒红": "burgundy", "姜黄": "mustard", "雾蓝": "dusty blue",
    "奶茶": "latte", "薄荷": "mint", "炭灰": "charcoal", "珊瑚": "coral", "香芋紫": "lavender",
    "素面": "plain", "渐变": "gradient", "波纹": "rippled", "斜纹": "twill", "大理石纹": "marble",
    "哑光": "matte", "亮面": "glossy", "金属": "metallic",
    "马克杯": "mug", "水瓶": "water bottle", "台灯": "desk lamp", "椅子": "chair", "挂钟": "wall clock",
    "花瓶": "vase", "雨伞": "umbrella", "水壶": "kettle", "笔记本": "notebook", "花盆": "plant pot",
}

SHOPS = ("拾光家居", "北屿", "半亩集", "栖木", "MUJI风小铺", "一隅", "禾物", "暖居")
SELLING_POINTS = ("ins风", "北欧", "家用", "送礼", "大容量", "简约", "耐用", "现货速发", "高颜值",
                  "宿舍必备", "轻奢", "新品", "加厚", "防摔", "日式")
SPECS = ("500ml", "大号", "小号", "1.5L", "30cm", "A5", "中号", "两件套")
VLOG = ("今天开箱", "分享一个", "回家路上买了", "被种草了", "室友都说好看", "挑了好久", "终于到了",
        "用了一个月", "真心推荐", "随手拍", "周末整理房间", "#居家好物", "#开箱", "记录生活", "别再踩坑了")

NULL = "null"
DEFAULT_SIZES = dict(num_queries=360, num_test_queries=120, num_val_queries=40, goods_per_query=3, videos_per_query=3,
                     frames_per_video=6, image_size=64)
MIN_FRAMES = 3
P_FRAME_WITHOUT_OBJECT = 0.25


@dataclass(frozen=True)
class HouseholdItem:
    finish: str
    surface: str
    colour: str
    kind: str

    @property
    def category(self) -> str:
        return self.kind

    @property
    def attributes(self) -> list[str]:
        return [self.finish, self.surface, self.colour, self.kind]

    @property
    def query(self) -> str:
        return "".join(self.attributes)


def all_combinations() -> list[HouseholdItem]:
    return [HouseholdItem(*c) for c in itertools.product(FINISHES, SURFACES, COLOURS, KINDS)]


# ---------------------------------------------------------------- text


def _colour_word(rng, item, p_synonym):
    return COLOUR_SYNONYMS[item.colour] if rng.random() < p_synonym else item.colour


def goods_text_lines(rng, pid, item) -> list[str]:
    """itemid, category, brand, entity, title, description (the Real400K goods text lines)."""
    shop = pick(rng, SHOPS)
    words = [_colour_word(rng, item, 0.2), item.kind, pick(rng, SELLING_POINTS), pick(rng, SELLING_POINTS)]
    for attribute in (item.surface, item.finish):
        if rng.random() < 0.85:  # sellers do not always state every attribute
            words.append(attribute)
    order = rng.permutation(len(words))
    title = f"{shop}【{pick(rng, SPECS)}】" + "".join(words[i] for i in order)
    description = f"{item.finish}工艺，{item.surface}表面，{item.colour}配色的{item.kind}。"
    return [str(pid), "家居", shop if rng.random() < 0.8 else NULL, item.kind if rng.random() < 0.6 else NULL,
            title, description if rng.random() < 0.5 else NULL]


def video_text_lines(rng, item) -> list[str]:
    """caption, title, text; each often null, both caption and title at once about half the time."""
    mention = [item.kind]
    if rng.random() < 0.5:
        mention.insert(0, pick(rng, [_colour_word(rng, item, 0.4), item.surface, item.finish]))
    caption = f"{pick(rng, VLOG)}{''.join(mention)}"
    title = f"{pick(rng, VLOG)}｜{''.join(mention)}"
    text = f"{pick(rng, VLOG)}，{pick(rng, VLOG)}"
    return [caption if rng.random() < 0.35 else NULL, title if rng.random() < 0.3 else NULL,
            text if rng.random() < 0.5 else NULL]


# ---------------------------------------------------------------- drawing


def _box(width, height, x0, y0, x1, y1):
    return (x0 * (width - 1), y0 * (height - 1), x1 * (width - 1), y1 * (height - 1))


def kind_mask(kind, width, height) -> np.ndarray:
    """Float mask (height, width) in [0, 1] of the kind's outline, built from PIL primitives."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    b = lambda *unit: _box(width, height, *unit)  # noqa: E731 - unit box -> pixel box
    line = max(1, width // 10)
    if kind == "马克杯":
        draw.rectangle(b(0.1, 0.15, 0.72, 0.95), fill=255)
        draw.ellipse(b(0.6, 0.3, 0.98, 0.75), outline=255, width=line)
    elif kind == "水瓶":
        draw.rectangle(b(0.38, 0.0, 0.62, 0.18), fill=255)
        draw.rounded_rectangle(b(0.22, 0.15, 0.78, 1.0), radius=max(1, width // 6), fill=255)
    elif kind == "台灯":
        draw.polygon([b(0.25, 0.0, 0, 0)[:2], b(0.75, 0.0, 0, 0)[:2], b(0.95, 0.4, 0, 0)[:2],
                      b(0.05, 0.4, 0, 0)[:2]], fill=255)
        draw.rectangle(b(0.45, 0.4, 0.55, 0.88), fill=255)
        draw.ellipse(b(0.2, 0.85, 0.8, 1.0), fill=255)
    elif kind == "椅子":
        draw.rectangle(b(0.15, 0.0, 0.3, 1.0), fill=255)
        draw.rectangle(b(0.15, 0.5, 0.9, 0.62), fill=255)
        draw.rectangle(b(0.78, 0.55, 0.9, 1.0), fill=255)
    elif kind == "挂钟":
        draw.ellipse(b(0.05, 0.05, 0.95, 0.95), fill=255)
        draw.ellipse(b(0.3, 0.3, 0.7, 0.7), fill=90)  # the dial shows through as a darker disc
    elif kind == "花瓶":
        draw.ellipse(b(0.1, 0.35, 0.9, 1.0), fill=255)
        draw.rectangle(b(0.35, 0.0, 0.65, 0.45), fill=255)
        draw.rectangle(b(0.25, 0.0, 0.75, 0.08), fill=255)
    elif kind == "雨伞":
        draw.pieslice(b(0.0, 0.0, 1.0, 0.8), 180, 360, fill=255)
        draw.rectangle(b(0.47, 0.38, 0.53, 0.95), fill=255)
        draw.arc(b(0.3, 0.82, 0.53, 1.0), 0, 180, fill=255, width=line)
    elif kind == "水壶":
        draw.ellipse(b(0.15, 0.3, 0.8, 1.0), fill=255)
        draw.polygon([b(0.75, 0.55, 0, 0)[:2], b(1.0, 0.3, 0, 0)[:2], b(0.98, 0.42, 0, 0)[:2],
                      b(0.8, 0.7, 0, 0)[:2]], fill=255)
        draw.arc(b(0.25, 0.05, 0.7, 0.55), 180, 360, fill=255, width=line)
    elif kind == "笔记本":
        draw.rectangle(b(0.15, 0.05, 0.85, 0.95), fill=255)
        draw.rectangle(b(0.15, 0.05, 0.25, 0.95), fill=150)  # the spine
    elif kind == "花盆":
        draw.polygon([b(0.1, 0.35, 0, 0)[:2], b(0.9, 0.35, 0, 0)[:2], b(0.75, 1.0, 0, 0)[:2],
                      b(0.25, 1.0, 0, 0)[:2]], fill=255)
        draw.ellipse(b(0.3, 0.0, 0.7, 0.4), fill=200)  # foliage
    else:
        raise ValueError(f"unknown household kind {kind!r}")
    return np.asarray(mask, dtype=np.float32) / 255.0


def surface_shade(surface, width, height, phase) -> np.ndarray:
    """A (height, width) multiplier around 1 that draws the surface motif."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = max(width, height)
    if surface == "渐变":
        return 0.55 + 0.75 * (y / max(height - 1, 1))
    if surface == "波纹":
        r = np.hypot(x - width / 2, y - height / 2)
        return 1.0 + 0.35 * np.sin(r * (2 * np.pi * 5 / scale) + phase)
    if surface == "斜纹":
        return 1.0 + 0.35 * np.sign(np.sin((x - y) * (2 * np.pi * 4 / scale) + phase))
    if surface == "大理石纹":
        veins = np.sin((x * 1.3 + 3 * np.sin(y * (7 / scale) + phase)) * (2 * np.pi * 2 / scale))
        return 1.0 + 0.45 * (np.abs(veins) < 0.15)
    return np.ones((height, width), np.float32)


def apply_finish(rng, finish, rgb) -> np.ndarray:
    height, width, _ = rgb.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if finish == "亮面":  # a bright specular band across the object
        centre = rng.uniform(0.2, 0.45) * width
        band = np.exp(-((x - centre - 0.3 * y) ** 2) / (2 * (0.06 * width + 1) ** 2))
        return rgb + 170 * band[..., None]
    if finish == "金属":  # desaturated, with horizontal brushed bands
        grey = rgb.mean(axis=2, keepdims=True)
        bands = 1.0 + 0.25 * np.sin(y * (2 * np.pi * 6 / max(height, 1)))[..., None]
        return (0.45 * rgb + 0.55 * grey) * bands + rng.normal(0, 10, (height, 1, 1))
    return rgb * 0.85 + rng.normal(0, 4, (height, width, 1))  # matte: darker, flat, fine grain


def render_object(rng, item, width, height, angle) -> tuple[np.ndarray, np.ndarray]:
    """(rgb float (h, w, 3), alpha float (h, w)) of the item, rotated by ``angle`` degrees."""
    base = np.array(COLOURS[item.colour], np.float32)
    shade = surface_shade(item.surface, width, height, rng.uniform(0, 2 * np.pi))
    rgb = np.clip(apply_finish(rng, item.finish, base * shade[..., None]), 0, 255)
    alpha = kind_mask(item.kind, width, height)
    if angle:
        rgb = np.asarray(Image.fromarray(rgb.astype(np.uint8)).rotate(angle, Image.BILINEAR), np.float32)
        alpha = np.asarray(Image.fromarray((alpha * 255).astype(np.uint8)).rotate(angle, Image.BILINEAR),
                           np.float32) / 255.0
    return rgb, alpha


def _backdrop(rng, width, height) -> np.ndarray:
    """A studio backdrop: plain, or (half the time) tiles or wood-like grain."""
    tone = rng.uniform(150, 245, 3).astype(np.float32)
    canvas = np.broadcast_to(tone, (height, width, 3)).copy()
    if rng.random() < 0.5:
        y, x = np.mgrid[0:height, 0:width]
        if rng.random() < 0.5:
            cell = int(rng.integers(6, 14))
            canvas *= (0.9 + 0.1 * (((x // cell) + (y // cell)) % 2))[..., None]
        else:
            canvas *= (0.92 + 0.08 * np.sin(x * rng.uniform(0.3, 0.9) + 2 * np.sin(y * 0.1)))[..., None]
    return canvas


def goods_image(rng, item, size) -> Image.Image:
    """Portrait (4:5) studio shot: the object off-centre, slightly rotated, with a drop shadow."""
    width, height = size, int(round(size * 1.25))
    canvas = _backdrop(rng, width, height)
    side = int(width * rng.uniform(0.55, 0.8))
    rgb, alpha = render_object(rng, item, side, side, rng.uniform(-12, 12))
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    shadow = np.zeros_like(rgb)
    paste(canvas, shadow, 0.35 * alpha, left + max(1, side // 12), top + max(1, side // 12))
    paste(canvas, rgb, alpha, left, top)
    return to_image(canvas + rng.normal(0, 3, canvas.shape))


def _room(rng, width, height) -> np.ndarray:
    """A wall above a floor at a random horizon, with furniture-like blocks."""
    wall, floor = rng.uniform(60, 235, 3), rng.uniform(40, 200, 3)
    horizon = int(height * rng.uniform(0.45, 0.8))
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:horizon], canvas[horizon:] = wall, floor
    image = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        w, h = rng.uniform(0.1, 0.35) * width, rng.uniform(0.15, 0.6) * height
        x0 = rng.uniform(-0.1, 1.0) * width
        y1 = horizon + rng.uniform(0, 0.2) * height
        draw.rectangle((x0, y1 - h, x0 + w, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return np.asarray(image, np.float32)


def video_frames(rng, item, size, max_frames) -> list[Image.Image]:
    """Landscape (16:9) frames of a room; the object moves, and some frames miss it entirely."""
    width, height = int(round(size * 16 / 9)), size
    num_frames = int(rng.integers(min(MIN_FRAMES, max_frames), max_frames + 1))
    shows_object = rng.random(num_frames) >= P_FRAME_WITHOUT_OBJECT
    shows_object[int(rng.integers(num_frames))] = True
    room = _room(rng, width, height)
    side0, side1 = rng.uniform(0.35, 0.7, 2) * height
    start = rng.uniform([-0.05, -0.05], [0.8, 0.5]) * (width, height)
    end = rng.uniform([-0.05, -0.05], [0.8, 0.5]) * (width, height)
    angle = rng.uniform(-20, 20)
    hand = rng.random() < 0.5
    skin = rng.uniform([170, 120, 90], [240, 190, 160]).astype(np.float32)
    frames = []
    for t, visible in zip(np.linspace(0.0, 1.0, num_frames), shows_object):
        canvas = room.copy()
        if visible:
            side = max(4, int(side0 + (side1 - side0) * t))
            rgb, alpha = render_object(rng, item, side, side, angle * (1 - t))
            left, top = (int(v) for v in start + (end - start) * t)
            paste(canvas, rgb, alpha, left, top)
            if hand:  # a hand holding the object covers its lower part
                hand_mask = np.zeros((side, side), np.float32)
                hand_mask[side // 2:, : side // 2] = 1.0
                paste(canvas, np.broadcast_to(skin, (side, side, 3)), hand_mask, left, top)
        exposure = rng.uniform(0.75, 1.25) * (1 + rng.uniform(-0.06, 0.06, 3))
        image = to_image(canvas * exposure + rng.normal(0, 6, canvas.shape))
        if rng.random() < 0.3:  # motion blur of a hand-held phone
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
        frames.append(image)
    return frames
