"""Text tokenizer: a pretrained one (hub name or local folder), or a BERT-style WordPiece trained
on the training texts and saved with the run, so evaluation reloads exactly the same vocabulary."""
from __future__ import annotations

from collections import Counter
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
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
    """BERT-style WordPiece: lower-cased, accents stripped, every CJK character its own word.

    The vocabulary is built here rather than by ``tokenizers``' WordPieceTrainer, whose result
    (which tokens, and their ids) changes from run to run: a resumed run, or the query and gallery
    sides of an untrained baseline, must all get the same ids from the same texts.
    """
    core = Tokenizer(models.WordPiece(vocab=deterministic_vocabulary(texts, vocab_size), unk_token="[UNK]"))
    core.normalizer = _normalizer()
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
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


def _normalizer():
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)


def deterministic_vocabulary(texts: Iterable[str], vocab_size: int) -> dict[str, int]:
    """Special tokens, then every character seen (as a word start, and as a ``##`` continuation),
    then whole multi-character words seen at least twice, each group by falling count then text,
    cut at ``vocab_size``. Greedy longest-match WordPiece then never needs [UNK] on the training text."""
    normalizer, pre_tokenizer = _normalizer(), pre_tokenizers.BertPreTokenizer()
    words: Counter = Counter()
    for text in texts:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    pieces: Counter = Counter()
    for word, count in words.items():
        pieces[word[0]] += count
        for char in word[1:]:
            pieces["##" + char] += count
    whole_words = Counter({word: count for word, count in words.items() if len(word) > 1 and count > 1})

    def by_frequency(counter: Counter) -> list[str]:
        return [token for token, _ in sorted(counter.items(), key=lambda item: (-item[1], item[0]))]

    tokens = SPECIAL_TOKENS + by_frequency(pieces) + by_frequency(whole_words)
    return {token: index for index, token in enumerate(tokens[:max(vocab_size, len(SPECIAL_TOKENS))])}


def load_saved_tokenizer(save_dir) -> PreTrainedTokenizerFast:
    """The tokenizer ``build_tokenizer`` saved into ``save_dir`` (a run folder); never downloads."""
    return AutoTokenizer.from_pretrained(save_dir, local_files_only=True)
