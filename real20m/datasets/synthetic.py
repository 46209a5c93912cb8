"""Synthetic Real400K-style dataset: procedurally drawn products, Chinese text, held-out queries.

Two styles (dataset families, ``--style``): "products" (this module, the default: clothing on
square images) and "household" (``synthetic_household``: household objects, non-square images,
variable frame counts, frames without the object, mostly null video text), designed apart so a
recipe tuned on one can be checked on the other. The rest of this docstring is the products style.

A query is an attribute combination (colour, pattern, material, category), e.g. "红色条纹棉质连衣裙".
Every attribute has a visual correlate, so the images carry the same information as the text:

    category -> silhouette      colour   -> fill colour
    pattern  -> surface motif   material -> texture / brightness

Goods images show the product large on a plain light background; video frames show the same
product smaller, moving, partly occluded, on a cluttered background under changing light. Test
queries are combinations never seen in training whose individual values all occur in training,
so retrieving them needs generalisation rather than memorisation.

The output is byte-identical for a given seed: every item draws from its own random stream
(derived from the seed, the item kind and its index), JPEGs use a fixed quality and carry no
metadata, and every file is written in a fixed order. Only numpy, PIL and the standard library
are used so the generator runs anywhere.

    python -m real20m.datasets.synthetic --out Dataset --seed 0 [--style household] [--english]

``--english`` adds the release's English variant (``synthetic_english``): a ``<pid>_eng.txt``
beside every item text and the English query as a 4th column of ``train_file/train.txt``.

Besides the item-to-item tasks (video2goods, goods2video) the test split has text-query tasks:
``test_file/queries.txt`` (``qid \t query text``) with ``eval_gt_query2goods.txt`` and
``eval_gt_query2video.txt`` (see ``write_query_tasks``).
"""

import argparse
import itertools
import os
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from real20m.datasets import synthetic_english, synthetic_household
from real20m.datasets.synthetic_drawing import caption_or_title, maybe_null, paste, pick, to_image
from real20m.datasets.layout import SHARD
from real20m.utils.entry import exit_on_input_error

COLOURS = {
    "红色": (205, 35, 40),
    "橙色": (240, 130, 25),
    "黄色": (235, 205, 40),
    "绿色": (45, 160, 70),
    "蓝色": (40, 85, 200),
    "紫色": (130, 55, 170),
    "粉色": (240, 130, 175),
    "黑色": (35, 35, 40),
}
PATTERNS = ("纯色", "条纹", "波点", "格子", "印花")
MATERIALS = ("棉质", "丝绸", "皮革", "羊毛")
# Silhouettes in unit coordinates (x right, y down): ("polygon", points) or ("ellipse"/"rect", box).
CATEGORIES = {
    "连衣裙": [("polygon", [(0.38, 0.0), (0.62, 0.0), (0.66, 0.35), (0.95, 1.0), (0.05, 1.0), (0.34, 0.35)])],
    "T恤": [("polygon", [(0.3, 0.0), (0.7, 0.0), (1.0, 0.2), (0.88, 0.42), (0.76, 0.34), (0.76, 1.0),
                        (0.24, 1.0), (0.24, 0.34), (0.12, 0.42), (0.0, 0.2)])],
    "裤子": [("polygon", [(0.15, 0.0), (0.85, 0.0), (0.95, 1.0), (0.58, 1.0), (0.5, 0.35), (0.42, 1.0), (0.05, 1.0)])],
    "帽子": [("chord", (0.15, 0.15, 0.85, 1.05)), ("ellipse", (0.0, 0.52, 1.0, 0.78))],
    "背包": [("rect", (0.1, 0.22, 0.9, 1.0)), ("polygon", [(0.3, 0.0), (0.7, 0.0), (0.7, 0.3), (0.6, 0.3),
                                                          (0.6, 0.1), (0.4, 0.1), (0.4, 0.3), (0.3, 0.3)])],
    "鞋子": [("polygon", [(0.05, 0.25), (0.42, 0.25), (0.52, 0.52), (0.95, 0.68), (0.95, 0.95), (0.05, 0.95)])],
}
# The attribute words in English (--english).
ENGLISH = {
    "红色": "red", "橙色": "orange", "黄色": "yellow", "绿色": "green", "蓝色": "blue", "紫色": "purple",
    "粉色": "pink", "黑色": "black",
    "纯色": "plain", "条纹": "striped", "波点": "polka-dot", "格子": "checked", "印花": "printed",
    "棉质": "cotton", "丝绸": "silk", "皮革": "leather", "羊毛": "wool",
    "连衣裙": "dress", "T恤": "t-shirt", "裤子": "trousers", "帽子": "hat", "背包": "backpack", "鞋子": "shoes",
}
BRANDS = ("悦衣坊", "木棉家", "南风", "初见", "青禾", "鹿角", "云朵", "Lumi")
MARKETING_WORDS = ("新款", "包邮", "爆款", "热卖", "正品", "特价", "百搭", "韩版", "时尚", "清仓",
                   "限时秒杀", "官方旗舰店", "2024春季", "显瘦", "潮流", "高级感")
CHATTER = ("家人们", "今天给大家分享", "真的绝了", "好看到哭", "链接在左下角", "姐妹们冲", "开箱",
           "上身效果", "性价比超高", "宝藏好物", "#好物推荐", "#穿搭", "谁懂啊", "记得点赞关注", "回购无数次")

GOODS_PID_BASE = 50_000
VIDEO_PID_BASE = 1_000_000
# item_rng kinds: 0 and 1 draw a goods item and a video, these their English texts (--english).
ENGLISH_GOODS, ENGLISH_VIDEO = 2, 3
JPEG_QUALITY = 90

SIZE_NAMES = ("num_queries", "num_test_queries", "num_val_queries", "goods_per_query", "videos_per_query", "frames_per_video",
              "image_size")


@dataclass(frozen=True)
class Product:
    colour: str
    pattern: str
    material: str
    category: str

    @property
    def attributes(self):
        return [self.colour, self.pattern, self.material, self.category]

    @property
    def query(self):
        return "".join(self.attributes)


def item_rng(seed, kind, index):
    """Independent random stream per item, so one item's draws never shift another's."""
    return np.random.default_rng(np.random.SeedSequence([seed, kind, index]))


def folder_of(pid):
    return str(pid % SHARD)


# ---------------------------------------------------------------- queries


def product_combinations():
    return [Product(*c) for c in itertools.product(COLOURS, PATTERNS, MATERIALS, CATEGORIES)]


def split_queries(rng, num_queries, num_test_queries, combos, num_val_queries=0):
    """Pick training combinations, then held-out ones made only of values seen in training: the
    test queries first, then the validation ones (so adding a validation split leaves the test
    split as it was)."""
    held_out = num_test_queries + num_val_queries
    if num_queries < 1 or num_test_queries < 0 or num_val_queries < 0 or num_queries + held_out > len(combos):
        raise ValueError(f"need 1 <= num_queries and num_queries + num_test_queries + num_val_queries <= "
                         f"{len(combos)}, got {num_queries} + {num_test_queries} + {num_val_queries}")
    order = rng.permutation(len(combos))
    train = [combos[i] for i in order[:num_queries]]
    seen = [set(values) for values in zip(*(p.attributes for p in train))]
    unseen_but_composable = [combos[i] for i in order[num_queries:]
                             if all(v in s for v, s in zip(combos[i].attributes, seen))]
    if len(unseen_but_composable) < held_out:
        raise ValueError(f"only {len(unseen_but_composable)} held-out combinations use values seen in "
                         f"training; ask for fewer test or validation queries or more training queries")
    return (train, unseen_but_composable[:num_test_queries],
            unseen_but_composable[num_test_queries:held_out])


# ---------------------------------------------------------------- text


def goods_text_lines(rng, pid, product):
    """itemid, category, brand, entity, title, description."""
    brand = pick(rng, BRANDS)
    words = product.attributes + [brand] + pick(rng, MARKETING_WORDS, k=int(rng.integers(2, 5)))
    title = "".join(words[i] for i in rng.permutation(len(words)))
    description = (f"{brand}这款{product.category}采用{product.material}面料，"
                   f"{product.pattern}设计，{product.colour}百搭。")
    return [str(pid), product.category, maybe_null(rng, brand, 0.1), maybe_null(rng, product.category, 0.2),
            title, maybe_null(rng, description, 0.3)]


def partial_mention(rng, product):
    """The category plus one or two other attributes, in a random order."""
    others = pick(rng, [product.colour, product.pattern, product.material], k=int(rng.integers(1, 3)))
    words = others + [product.category]
    return "".join(words[i] for i in rng.permutation(len(words)))


def video_text_lines(rng, product):
    """caption, title, text; at least one of caption and title is present."""
    caption = f"{pick(rng, CHATTER)}，{partial_mention(rng, product)}{pick(rng, CHATTER)}"
    title = f"{pick(rng, CHATTER)} {partial_mention(rng, product)} {pick(rng, MARKETING_WORDS)}"
    text = "，".join(pick(rng, CHATTER, k=3)) + f"，这件{product.category}{pick(rng, CHATTER)}"
    caption, title = caption_or_title(rng, caption, title)
    return [caption, title, maybe_null(rng, text, 0.4)]


# ---------------------------------------------------------------- drawing


def silhouette_mask(category, width, height):
    """Float mask (height, width) in [0, 1] of the category's shape."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)

    def scale(points):
        return [(x * (width - 1), y * (height - 1)) for x, y in points]

    for kind, geometry in CATEGORIES[category]:
        if kind == "polygon":
            draw.polygon(scale(geometry), fill=255)
        else:
            box = scale([geometry[:2], geometry[2:]])
            if kind == "ellipse":
                draw.ellipse(box, fill=255)
            elif kind == "chord":
                draw.chord(box, 180, 360, fill=255)
            else:
                draw.rectangle(box, fill=255)
    return np.asarray(mask, dtype=np.float32) / 255.0


def pattern_mask(pattern, width, height, period, phase):
    """1 where the motif covers the surface, 0 elsewhere."""
    y, x = np.mgrid[0:height, 0:width]
    x, y = x + phase, y + phase
    if pattern == "条纹":
        return ((y // (period / 2)) % 2 == 0).astype(np.float32)
    if pattern == "格子":
        return (((x % period) < period / 3) | ((y % period) < period / 3)).astype(np.float32)
    if pattern == "波点":
        dx, dy = (x % period) - period / 2, (y % period) - period / 2
        return (dx * dx + dy * dy <= (period / 3.2) ** 2).astype(np.float32)
    if pattern == "印花":
        return ((((x + y) % period) < period / 4) | (((x - y) % period) < period / 4)).astype(np.float32)
    return np.zeros((height, width), np.float32)


def material_finish(rng, material, rgb):
    """Apply the material's texture/brightness to an (h, w, 3) float image."""
    height, width, _ = rgb.shape
    if material == "丝绸":  # bright, smooth diagonal sheen
        y, x = np.mgrid[0:height, 0:width]
        sheen = 1.05 + 0.3 * np.sin((x + y) * (np.pi / max(width, 1)) * 1.5)
        return rgb * sheen[..., None]
    if material == "皮革":  # dark with one specular highlight
        y, x = np.mgrid[0:height, 0:width]
        cy, cx = rng.uniform(0.2, 0.5) * height, rng.uniform(0.3, 0.7) * width
        highlight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (0.12 * width + 1) ** 2))
        return rgb * 0.6 + 150 * highlight[..., None]
    if material == "羊毛":  # coarse speckle, slightly washed out
        grey = rgb.mean(axis=2, keepdims=True)
        return 0.75 * rgb + 0.25 * grey + rng.normal(0, 30, (height, width, 1))
    return rgb + rng.normal(0, 6, (height, width, 1))  # cotton: matte, fine grain


def render_sprite(rng, product, width, height):
    """The product as (rgb float (h, w, 3), alpha float (h, w))."""
    base = np.array(COLOURS[product.colour], np.float32)
    motif = 0.35 * base + 0.65 * 255.0
    period = max(4.0, min(width, height) / 5.0)
    motif_mask = pattern_mask(product.pattern, width, height, period, int(rng.integers(0, 8)))[..., None]
    rgb = base * (1 - motif_mask) + motif * motif_mask
    rgb = material_finish(rng, product.material, rgb)
    return np.clip(rgb, 0, 255), silhouette_mask(product.category, width, height)


def goods_image(rng, product, size):
    """Product large and centred on a plain light background."""
    canvas = np.full((size, size, 3), rng.uniform(225, 250), np.float32)
    canvas += rng.uniform(-6, 6, 3).astype(np.float32)  # slight tint of the studio backdrop
    side = int(size * rng.uniform(0.7, 0.85))
    rgb, alpha = render_sprite(rng, product, side, side)
    jitter = int(size * 0.04)
    offset = (size - side) // 2
    paste(canvas, rgb, alpha, offset + int(rng.integers(-jitter, jitter + 1)),
          offset + int(rng.integers(-jitter, jitter + 1)))
    return to_image(canvas + rng.normal(0, 2, canvas.shape))


def cluttered_background(rng, size):
    """A two-colour gradient with random distractor shapes."""
    top, bottom = rng.uniform(30, 230, 3), rng.uniform(30, 230, 3)
    ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    canvas = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (size, size, 3)).astype(np.uint8)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * size
        w, h = rng.uniform(0.1, 0.45, 2) * size
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x0 + w, y0 + h), fill=fill)
    return np.asarray(image, np.float32)


def video_frames(rng, product, size, num_frames):
    """The product smaller, moving across a cluttered scene, partly occluded, under changing light."""
    background = cluttered_background(rng, size)
    side0, side1 = rng.uniform(0.38, 0.55, 2) * size
    start, end = rng.uniform(-0.05, 0.55, 2) * size, rng.uniform(-0.05, 0.55, 2) * size
    gain0, gain1 = rng.uniform(0.7, 1.25, 2)
    occluder = None
    if rng.random() < 0.6:
        occluder = (rng.uniform(0.1, 0.3) * size, tuple(int(c) for c in rng.integers(0, 256, 3)),
                    rng.uniform(0, size, 2), rng.uniform(0, size, 2))
    frames = []
    for t in np.linspace(0.0, 1.0, num_frames):  # one frame -> t = 0 only
        side = max(4, int(side0 + (side1 - side0) * t))
        rgb, alpha = render_sprite(rng, product, side, side)
        canvas = background.copy()
        left, top = (int(v) for v in start + (end - start) * t)
        paste(canvas, rgb, alpha, left, top)
        if occluder is not None:
            occluder_side, fill, o_start, o_end = occluder
            ox, oy = o_start + (o_end - o_start) * t
            block = np.ones((int(occluder_side), int(occluder_side)), np.float32)
            paste(canvas, np.broadcast_to(np.array(fill, np.float32), block.shape + (3,)), block, int(ox), int(oy))
        light = (gain0 + (gain1 - gain0) * t) * (1 + rng.uniform(-0.08, 0.08, 3))
        frames.append(to_image(canvas * light + rng.normal(0, 8, canvas.shape)))
    return frames


# ---------------------------------------------------------------- styles


class Style(NamedTuple):
    """One dataset family: its attribute combinations, text and rendering, and default sizes.
    An item has ``query``, ``category``, ``colour`` and ``attributes``."""
    combinations: Callable[[], list]
    goods_text_lines: Callable          # (rng, pid, item) -> six goods text lines
    goods_image: Callable               # (rng, item, image_size) -> PIL image
    video_text_lines: Callable          # (rng, item) -> caption, title, text
    video_frames: Callable              # (rng, item, image_size, frames_per_video) -> PIL images
    default_sizes: dict
    english: dict                       # attribute word -> English word (--english)


STYLES = {
    "products": Style(product_combinations, goods_text_lines, goods_image, video_text_lines, video_frames,
                      dict(num_queries=240, num_test_queries=120, num_val_queries=40, goods_per_query=3, videos_per_query=3,
                           frames_per_video=5, image_size=64),
                      ENGLISH),
    "household": Style(synthetic_household.all_combinations, synthetic_household.goods_text_lines,
                       synthetic_household.goods_image, synthetic_household.video_text_lines,
                       synthetic_household.video_frames, synthetic_household.DEFAULT_SIZES,
                       synthetic_household.ENGLISH),
}
DEFAULT_STYLE = "products"


# ---------------------------------------------------------------- writing


class TreeWriter:
    """Writes images and text under the dataset root and counts what it wrote."""

    def __init__(self, root):
        self.root = root
        self.images = 0
        self.texts = 0

    def _path(self, relative):
        path = os.path.join(self.root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def image(self, relative, image):
        image.save(self._path(relative), format="JPEG", quality=JPEG_QUALITY)
        self.images += 1

    def text(self, relative, lines):
        with open(self._path(relative), "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in lines))
        self.texts += 1


def write_goods(writer, style, seed, index, pid, product, size):
    rng = item_rng(seed, 0, index)
    folder = folder_of(pid)
    writer.text(f"Real400K/goods/text/{folder}/{pid}.txt", style.goods_text_lines(rng, pid, product))
    writer.image(f"Real400K/goods/images/{folder}/{pid}.jpg", style.goods_image(rng, product, size))
    return f"{folder}/{pid}.jpg"


def write_video(writer, style, seed, index, pid, product, size, num_frames):
    rng = item_rng(seed, 1, index)
    folder = folder_of(pid)
    writer.text(f"Real400K/video/text/{folder}/{pid}.txt", style.video_text_lines(rng, product))
    frames = style.video_frames(rng, product, size, num_frames)
    writer.image(f"Real400K/video/images/{folder}/{pid}.jpg", frames[0])  # cover = first frame
    paths = []
    for k, frame in enumerate(frames):
        writer.image(f"Real400K/video/images/{folder}/{pid}_{k}.jpg", frame)
        paths.append(f"{folder}/{pid}_{k}.jpg")
    return ",".join(paths)


def write_items(writer, style, seed, queries, first_index, sizes):
    """Render every item of these queries; return per query (goods rows, video rows)."""
    groups = []
    for q, product in enumerate(queries):
        goods, videos = [], []
        for j in range(sizes["goods_per_query"]):
            index = first_index["goods"] + q * sizes["goods_per_query"] + j
            pid = GOODS_PID_BASE + index
            frame = write_goods(writer, style, seed, index, pid, product, sizes["image_size"])
            goods.append((pid, "goods", product.query, frame, f"{folder_of(pid)}/{pid}.txt"))
        for j in range(sizes["videos_per_query"]):
            index = first_index["photo"] + q * sizes["videos_per_query"] + j
            pid = VIDEO_PID_BASE + index
            frames = write_video(writer, style, seed, index, pid, product, sizes["image_size"],
                                 sizes["frames_per_video"])
            videos.append((pid, "photo", product.query, frames, f"{folder_of(pid)}/{pid}.txt"))
        groups.append((goods, videos))
    return groups


def write_english_texts(writer, style, seed, queries, groups):
    """``<pid>_eng.txt`` beside the text of every item of these queries (rows of ``write_items``)."""
    for product, (goods, videos) in zip(queries, groups):
        for pid, *_ in goods:
            rng = item_rng(seed, ENGLISH_GOODS, pid - GOODS_PID_BASE)
            writer.text(f"Real400K/goods/text/{folder_of(pid)}/{pid}_eng.txt",
                        synthetic_english.goods_text_lines(rng, pid, product, style.english))
        for pid, *_ in videos:
            rng = item_rng(seed, ENGLISH_VIDEO, pid - VIDEO_PID_BASE)
            writer.text(f"Real400K/video/text/{folder_of(pid)}/{pid}_eng.txt",
                        synthetic_english.video_text_lines(rng, product, style.english))


def tsv(rows):
    return ["\t".join(str(field) for field in row) for row in rows]


def image_ref(row):
    root = "goods" if row[1] == "goods" else "video"
    return f"{root}/images/{folder_of(row[0])}/{row[0]}.jpg"


def ground_truth(groups, from_videos):
    lines = []
    for goods, videos in groups:
        queries, docs = (videos, goods) if from_videos else (goods, videos)
        targets = ",".join(image_ref(d) for d in docs)
        lines.extend(f"{image_ref(q)}\t{targets}" for q in queries)
    return lines


def id_list(rows):
    return ",".join(str(row[0]) for row in rows) or "None"


def write_item_task_files(writer, folder, groups):
    """The item-to-item tasks of a held-out split: query items, gallery and both ground truths."""
    writer.text(f"{folder}/video_queries.txt", tsv(r for _, v in groups for r in v))
    writer.text(f"{folder}/goods_gallery.txt", tsv(r for g, _ in groups for r in g))
    writer.text(f"{folder}/eval_gt_video2goods.txt", ground_truth(groups, from_videos=True))
    writer.text(f"{folder}/eval_gt_goods2video.txt", ground_truth(groups, from_videos=False))


def train_line(product, goods, videos, glossary):
    """``query \\t goods_ids \\t video_ids``; with a glossary (--english) the English query as a 4th field."""
    line = f"{product.query}\t{id_list(goods)}\t{id_list(videos)}"
    return f"{line}\t{synthetic_english.query(product, glossary)}" if glossary else line


def write_annotations(writer, train, test, train_groups, test_groups, val_groups, glossary=None):
    writer.text("train_file/train.txt", [train_line(p, g, v, glossary) for p, (g, v) in zip(train, train_groups)])
    writer.text("train_file/train_items.txt", tsv(r for g, v in train_groups for r in g + v))
    writer.text("train_file/cluster.txt",
                [f"{p.query}\t{p.category}\t{p.colour}{p.category}\t{p.query}" for p in train])
    write_item_task_files(writer, "test_file", test_groups)
    if val_groups:
        write_item_task_files(writer, "val_file", val_groups)
    writer.text("Real400K/query/queries.txt",
                [f"{p.query}\ttrain" for p in train] + [f"{p.query}\ttest" for p in test])
    write_query_tasks(writer, len(train), test, test_groups)


def write_query_tasks(writer, first_qid, test, test_groups):
    """Text-query retrieval files of the held-out split (query2goods, query2video).

    ``test_file/queries.txt`` is ``qid \t query text``, one line per test query; a query's qid is
    its line number (from 0) in ``Real400K/query/queries.txt``, which lists the training queries
    first. The ground truth uses the qid as the query reference and the test items' image
    references as the other ground-truth files do. Nothing here draws random numbers, so every
    other file of the dataset is the same with or without these."""
    qids = range(first_qid, first_qid + len(test))
    writer.text("test_file/queries.txt", [f"{qid}\t{p.query}" for qid, p in zip(qids, test)])
    for name, column in (("query2goods", 0), ("query2video", 1)):
        writer.text(f"test_file/eval_gt_{name}.txt",
                    [f"{qid}\t{','.join(image_ref(row) for row in group[column])}"
                     for qid, group in zip(qids, test_groups)])


def directory_bytes(root):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def generate(out_dir, seed=0, style=DEFAULT_STYLE, english=False, **sizes):
    """Write the whole synthetic tree of ``style`` under out_dir and return a summary dict.
    Sizes not given take the style's defaults; ``english`` adds the English variant."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose one of {sorted(STYLES)}")
    unknown = set(sizes) - set(SIZE_NAMES)
    if unknown:
        raise TypeError(f"unknown size arguments: {sorted(unknown)}")
    family = STYLES[style]
    sizes = {**family.default_sizes, **sizes}
    for name in ("goods_per_query", "videos_per_query", "frames_per_video"):
        if sizes[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {sizes[name]}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if sizes["image_size"] < 16:
        raise ValueError(f"image_size must be >= 16, got {sizes['image_size']}")
    started = time.perf_counter()
    train, test, val = split_queries(np.random.default_rng(seed), sizes["num_queries"], sizes["num_test_queries"],
                                     family.combinations(), sizes["num_val_queries"])
    num_goods = (len(train) + len(test) + len(val)) * sizes["goods_per_query"]
    num_videos = (len(train) + len(test) + len(val)) * sizes["videos_per_query"]
    if GOODS_PID_BASE + num_goods > VIDEO_PID_BASE:
        raise ValueError(f"{num_goods} goods would run into the video pid range")

    writer = TreeWriter(out_dir)
    train_groups = write_items(writer, family, seed, train, {"goods": 0, "photo": 0}, sizes)
    test_first = {"goods": len(train) * sizes["goods_per_query"], "photo": len(train) * sizes["videos_per_query"]}
    test_groups = write_items(writer, family, seed, test, test_first, sizes)
    # Validation items come after the test items, so the train and test files do not depend on them.
    val_first = {kind: first + len(test) * sizes[f"{name}_per_query"]
                 for (kind, first), name in zip(test_first.items(), ("goods", "videos"))}
    val_groups = write_items(writer, family, seed, val, val_first, sizes)
    if english:
        for queries, groups in ((train, train_groups), (test, test_groups), (val, val_groups)):
            write_english_texts(writer, family, seed, queries, groups)
    write_annotations(writer, train, test, train_groups, test_groups, val_groups, family.english if english else None)
    return dict(out_dir=str(out_dir), seed=seed, style=style, train_queries=len(train), test_queries=len(test),
                val_queries=len(val),
                goods=num_goods, videos=num_videos, images=writer.images, text_files=writer.texts,
                bytes=directory_bytes(out_dir), seconds=round(time.perf_counter() - started, 2))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Write a small synthetic Real400K-style dataset.")
    parser.add_argument("--out", required=True,
                        help="output folder (gets Real400K/, train_file/, test_file/ and val_file/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", default=DEFAULT_STYLE, choices=sorted(STYLES),
                        help="dataset family: products (clothing, square images) or household (household "
                             "objects, non-square images, variable frame counts, mostly null video text)")
    defaults = STYLES[DEFAULT_STYLE].default_sizes
    parser.add_argument("--english", action="store_true",
                        help="also write the English variant: <pid>_eng.txt beside every item text and the English "
                             "query as a 4th column of train_file/train.txt (train with --query_language en)")
    parser.add_argument("--num-queries", type=int, help=f"training queries (products: {defaults['num_queries']})")
    parser.add_argument("--num-test-queries", type=int,
                        help="held-out queries (unseen attribute combinations; "
                             f"products: {defaults['num_test_queries']})")
    parser.add_argument("--num-val-queries", type=int,
                        help="held-out queries of the validation split val_file/ (0: none; "
                             f"products: {defaults['num_val_queries']})")
    parser.add_argument("--goods-per-query", type=int, help=f"(products: {defaults['goods_per_query']})")
    parser.add_argument("--videos-per-query", type=int, help=f"(products: {defaults['videos_per_query']})")
    parser.add_argument("--frames-per-video", type=int,
                        help=f"frames of every video; household: the most frames of a video "
                             f"(products: {defaults['frames_per_video']})")
    parser.add_argument("--image-size", type=int,
                        help=f"side of the square images; household: the shorter side (products: "
                             f"{defaults['image_size']})")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    sizes = {name: getattr(args, name) for name in SIZE_NAMES if getattr(args, name) is not None}
    summary = generate(args.out, seed=args.seed, style=args.style, english=args.english, **sizes)
    print(f"synthetic {summary['style']} dataset in {summary['out_dir']}: {summary['train_queries']} train / "
          f"{summary['test_queries']} test queries, {summary['goods']} goods, {summary['videos']} videos, "
          f"{summary['images']} images, {summary['bytes'] / 1e6:.1f} MB, {summary['seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    exit_on_input_error(main)
