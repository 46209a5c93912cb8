"""Tiny Real400K-style layouts written into tmp_path (no dependency on the synthetic generator)."""
import os

import pytest
from PIL import Image

from real20m.config import DataConfig

SHARD = 50000
GOODS = {50001: "red dress", 50002: "blue dress", 50003: "phone case", 50004: "leather bag"}
# video pid -> number of frames <pid>_<k>.jpg (0 = cover <pid>.jpg only)
VIDEOS = {1000001: 6, 1000002: 3, 1000003: 0, 1000004: 2}
TRAIN_GROUPED = "red dress\t50001,50002\t1000001\nphone case\t50003\tNone\nshoes\tNone\t1000002,1000003\nbag\t50004\t1000004\n"


def write_image(path, color=(200, 30, 30), size=(40, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")


def write_text(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def shard(root, pid, name):
    return os.path.join(root, str(pid % SHARD), name)


def make_layout(root):
    """Goods and videos with images and texts; returns the data configuration section reading them."""
    cfg = DataConfig(
        goods_img_root=os.path.join(root, "goods", "images"), goods_text_root=os.path.join(root, "goods", "text"),
        photo_img_root=os.path.join(root, "video", "images"), photo_text_root=os.path.join(root, "video", "text"),
        train_file=os.path.join(root, "train.txt"), clip_length=4, image_size=16, batch_size=2, max_query_len=8,
        max_title_len=8, compat="default", text_aug=False,
    )
    for pid, title in GOODS.items():
        write_image(shard(cfg.goods_img_root, pid, f"{pid}.jpg"), color=(pid % 255, 10, 10))
        write_text(shard(cfg.goods_text_root, pid, f"{pid}.txt"), [str(pid), "cat", "brand", "entity", title, "desc"])
    for pid, frames in VIDEOS.items():
        for k in range(frames):
            write_image(shard(cfg.photo_img_root, pid, f"{pid}_{k}.jpg"), color=(10, 20 * k, 10))
        write_image(shard(cfg.photo_img_root, pid, f"{pid}.jpg"), color=(0, 0, 255))
        write_text(shard(cfg.photo_text_root, pid, f"{pid}.txt"), [f"caption {pid}", f"title {pid}", "body text"])
    with open(cfg.train_file, "w", encoding="utf-8") as handle:
        handle.write(TRAIN_GROUPED)
    return cfg


@pytest.fixture
def layout(tmp_path):
    return make_layout(str(tmp_path))


class CharTokenizer:
    """Stand-in for a HF tokenizer in collate tests: one id per character, [CLS]=1 ... [SEP]=2, pad 0."""

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        import torch

        ids = [[1] + [3 + (ord(c) % 50) for c in text][: max_length - 2] + [2] for text in texts]
        longest = max(map(len, ids))
        return {
            "input_ids": torch.tensor([row + [0] * (longest - len(row)) for row in ids]),
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in ids]),
        }
