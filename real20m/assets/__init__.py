"""Data files shipped inside the package (see each folder's README.md for origin and licence).

``CHINESE_BERT_VOCAB_DIR``: the 21128-token Chinese BERT vocabulary the original release tokenises
with (its hub tokenizer ``hfl/chinese-roberta-wwm-ext``), so that ``--compat original`` gets the
original's token ids offline: ``AutoTokenizer.from_pretrained(CHINESE_BERT_VOCAB_DIR)`` gives a
BERT tokenizer with the default settings.
"""
from pathlib import Path

# A plain folder path: the package is installed unzipped (pip), and from_pretrained needs a folder.
CHINESE_BERT_VOCAB_DIR = str(Path(__file__).resolve().parent / "tokenizer_zh")
