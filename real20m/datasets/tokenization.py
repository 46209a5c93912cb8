"""Text tokenizer: a pretrained one (hub name or local folder), or a BERT-style WordPiece trained
on the training texts and saved with the run, so evaluation reloads exactly the same vocabulary."""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] first -> id 0


def build_tokenizer(pretrained: str | None, texts: Iterable[str] | None, save_dir: str | None,
                    vocab_size: int = 8000) -> PreTrainedTokenizerFast:
    """``AutoTokenizer.from_pretrained(pretrained)`` or, without ``pretrained``, a WordPiece trained on ``texts``."""
    if pretrained:
        tokenizer = AutoTokenizer.from_pretrained(pretrained)
    else:
        if texts is None:
            raise ValueError("training a tokenizer needs texts (or give a pretrained tokenizer)")
        tokenizer = train_wordpiece(texts, vocab_size)
    if save_dir:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8000) -> PreTrainedTokenizerFast:
    """BERT-style WordPiece: lower-cased, accents stripped, every CJK character its own word."""
    core = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    core.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = core.token_to_id("[CLS]"), core.token_to_id("[SEP]")
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    core.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )


def load_saved_tokenizer(save_dir) -> PreTrainedTokenizerFast:
    """The tokenizer ``build_tokenizer`` saved into ``save_dir`` (a run folder); never downloads."""
    return AutoTokenizer.from_pretrained(save_dir, local_files_only=True)
