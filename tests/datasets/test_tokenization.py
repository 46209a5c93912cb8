from real20m.datasets.tokenization import build_tokenizer, load_saved_tokenizer

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
