"""The Chinese BERT vocabulary shipped in ``real20m/assets`` gives the original's tokenizer offline."""
import hashlib
import tomllib
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertTokenizerFast

from real20m.assets import CHINESE_BERT_VOCAB_DIR

REPO = Path(__file__).resolve().parents[2]
VOCAB_MD5 = "3b5b76c4aef48ecf8cb3abaafe960f09"  # cn_clip 1.5.1's vocab.txt
FILES = ("vocab.txt", "config.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(CHINESE_BERT_VOCAB_DIR)


def test_the_folder_holds_the_release_vocabulary():
    folder = Path(CHINESE_BERT_VOCAB_DIR)
    assert folder.is_absolute() and all((folder / name).is_file() for name in FILES)
    assert hashlib.md5((folder / "vocab.txt").read_bytes()).hexdigest() == VOCAB_MD5


def test_a_wheel_ships_the_folder():
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {path.name for pattern in package_data["real20m.assets"]
               for path in Path(CHINESE_BERT_VOCAB_DIR).parent.glob(pattern)}
    assert set(FILES) <= shipped


def test_auto_tokenizer_gives_bert_with_default_settings(tokenizer):
    assert isinstance(tokenizer, BertTokenizerFast) and len(tokenizer) == 21128
    assert [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.mask_token_id] == [0, 100, 101, 102, 103]
    # lower-casing and accent stripping, CJK characters split, newlines are whitespace
    assert tokenizer("CAFÉ")["input_ids"] == tokenizer("cafe")["input_ids"]
    assert tokenizer("连衣裙")["input_ids"] == tokenizer("连 衣\n裙")["input_ids"]
    assert tokenizer("null")["input_ids"] == [101, 12083, 102] and tokenizer("")["input_ids"] == [101, 102]


def test_original_truncation_lengths(tokenizer):
    long_text = "连衣裙" * 50
    titles = tokenizer([long_text, "null"], padding=True, truncation=True, max_length=90)["input_ids"]
    queries = tokenizer([long_text], padding=True, truncation=True, max_length=20)["input_ids"]
    assert [len(ids) for ids in titles] == [90, 90] and titles[0][-1] == 102 and titles[1][3:] == [0] * 87
    assert len(queries[0]) == 20 and queries[0][-1] == 102
