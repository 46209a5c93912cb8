from real20m.datasets.tokenization import build_tokenizer, load_saved_tokenizer, train_wordpiece

TEXTS = ["红色连衣裙 夏季 新款", "red summer dress", "手机壳 phone case", "leather bag 皮包"] * 20


def test_trained_wordpiece_saved_and_reloaded(tmp_path):
    tokenizer = build_tokenizer(None, iter(TEXTS), str(tmp_path / "tok"), vocab_size=200)
    assert tokenizer.pad_token_id == 0
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    encoded = tokenizer("红色 Dress")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens == ["[CLS]", "红", "色", "dress", "[SEP]"]  # Chinese split per character, lower-cased
    reloaded = load_saved_tokenizer(str(tmp_path / "tok"))
    assert reloaded("红色 Dress")["input_ids"] == encoded["input_ids"]
    assert reloaded.pad_token == "[PAD]" and reloaded.mask_token == "[MASK]"


def test_pretrained_local_folder(tmp_path):
    build_tokenizer(None, TEXTS, str(tmp_path / "tok"), vocab_size=200)
    tokenizer = build_tokenizer(str(tmp_path / "tok"), None, str(tmp_path / "copy"))
    assert tokenizer("phone case")["input_ids"] == load_saved_tokenizer(str(tmp_path / "copy"))("phone case")["input_ids"]


def test_trained_vocabulary_is_the_same_every_time_and_ordered_by_frequency():
    # Resumed runs and the two sides of an untrained baseline retrain the vocabulary: the ids must match.
    texts = ["红色条纹连衣裙", "红色格子背包", "蓝色 2024 新款", "2024 爆款"] * 3
    first = train_wordpiece(texts, vocab_size=50).get_vocab()
    assert all(train_wordpiece(texts, vocab_size=50).get_vocab() == first for _ in range(3))
    # 色 is the most frequent character; whole words such as 2024 come after every character.
    assert [first[token] for token in ("[PAD]", "色", "2024")] == [0, 5, len(first) - 1]
