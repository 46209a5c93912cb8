"""Configuration: resolved once, CLI > YAML > defaults, every value reaching its consumers, and the
original release's command lines."""
import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from real20m.config import ConfigError, OPTIONS, build_parser, parse_config, resolve
from real20m.config.file_layout import FileFacts
from real20m.config.values import defaults
from real20m.factory import build_collator, build_eval_data, build_model, build_train_data
from real20m.utils.distributed import DistEnv

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(path.stem for path in (REPO / "real20m" / "configs").glob("*.yaml"))
SINGLE_CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True, backend=None)
# Small Chinese-CLIP towers for building a shipped config's model on a CPU in a test (paper.yaml names a
# hub model; tiny.yaml's vision tower is a timm CNN, which has no image size to derive).
SMALL_TOWERS = ["--model.backbone", "chinese_clip", "--model.pretrained", "null",
                "--model.text", "{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
                                "intermediate_size: 64, max_position_embeddings: 64}",
                "--model.vision", "{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
                                  "intermediate_size: 64, patch_size: 8}",
                "--model.caption", "{n_layer: 1, n_head: 2, n_embd: 64}"]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


class WordTokenizer:
    """Whitespace tokenizer standing in for the trained vocabulary (the factory needs len and pad id)."""
    pad_token_id = 0

    def __len__(self):
        return 100

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        ids = [[1] + [3 + hash(word) % 90 for word in text.split()][: max_length - 2] + [2] for text in texts]
        longest = max(map(len, ids))
        return {"input_ids": torch.tensor([row + [0] * (longest - len(row)) for row in ids]),
                "attention_mask": torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in ids])}


@pytest.mark.parametrize("name", SHIPPED)
def test_command_line_values_reach_dataset_collate_and_model(name, tiny_data_root):
    cfg = parse_config(["--config", name, "--data_root", tiny_data_root, "--clip_length", "3", "--image_size", "48",
                        "--embedding_size", "64", "--compat", "original", "--batch_size", "2", "--workers", "0",
                        *SMALL_TOWERS, "--model.frame_heads", "4"])
    _, sampler, loader = build_train_data(cfg.data, build_collator(cfg.data, WordTokenizer()), SINGLE_CPU, cfg.seed)
    videos = next(batch for batch in loader if batch["source"] == "photo")
    assert videos["pixels"].shape[1:] == (3, 3, 48, 48)
    gallery = build_eval_data(cfg.data, f"{tiny_data_root}/test_file/video_queries.txt")
    assert gallery[0]["frames"].shape == (3, 3, 48, 48)
    collate = build_collator(cfg.data, WordTokenizer())
    assert (collate.max_query_len, collate.max_title_len) == (cfg.data.max_query_len, cfg.data.max_title_len)

    model = build_model(cfg.model, WordTokenizer(), cfg.seed)
    assert model.frame.clip_length == 3 and model.embed_dim == 64
    assert model.vision.encoder.config.image_size == 48 and model.frame.resblocks[0].attn.num_heads == 4
    assert not model.use_title_mask and not model.use_query_mask
    out = model(videos)
    assert out["fused"].shape == (2, 64)


def test_a_short_training_run_with_eight_frames_works(tiny_data_root, tmp_path):
    from real20m.engine.trainer import Trainer
    cfg = parse_config(["--config", "tiny", "--data_root", tiny_data_root, "--output_dir", str(tmp_path),
                        "--clip_length", "8", "--image_size", "32", "--batch_size", "4", "--workers", "0",
                        "--vocab_size", "300", "--max_steps", "3"])
    trainer = Trainer(cfg, SINGLE_CPU)
    trainer.fit()
    assert trainer.global_step == 3 and trainer.model.frame.clip_length == 8


def test_command_line_wins_over_yaml_which_wins_over_defaults(tmp_path):
    config = write(tmp_path / "c.yaml", "data: {batch_size: 16}\noptim: {lr: 0.5, epochs: 7}\n"
                                        "model: {embed_dim: 64, text: {hidden_size: 48}}\n")
    cfg = parse_config(["--config", config, "--lr", "0.25", "--model.text.num_hidden_layers", "3"])
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.optim.epochs) == (16, 0.25, 7)
    assert cfg.optim.decay_epochs == 3  # default
    assert cfg.model.embed_dim == 64 and dict(cfg.model.text) == {"hidden_size": 48, "num_hidden_layers": 3}
    dotted = parse_config(["--config", config, "--optim.lr=0.125", "--data.batch_size", "8"])
    assert (dotted.optim.lr, dotted.data.batch_size) == (0.125, 8)


def test_flat_yaml_files_of_the_earlier_format_still_parse(tmp_path):
    config = write(tmp_path / "c.yaml", "batch_size: 16\nlr: 0.5\nlr_mult: {vision: 0.5}\n"
                                        "loss_weights: {itc: 0.5}\nmodel:\n  embed_dim: 64\n")
    cfg = parse_config(["--config", config])
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.model.embed_dim) == (16, 0.5, 64)
    assert cfg.optim.lr_mult["vision"] == 0.5 and cfg.optim.lr_mult["text"] == 0.01
    assert cfg.loss.weights["itc"] == 0.5 and cfg.loss.weights["fused"] == 1.0


def test_the_resolved_configuration_is_frozen():
    cfg = parse_config([])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.clip_length = 8


@pytest.mark.parametrize("text, message", [
    ("batch_sise: 16\n", "bad.yaml.*batch_sise"),
    ("data: {batch_sise: 16}\n", "bad.yaml.*data.batch_sise"),
    ("model: {clip_length: 8}\n", "bad.yaml.*model.clip_length is derived.*--clip_length"),
    ("loss: {weights: {fusd: 1.0}}\n", "fusd"),
    ("optim: {lr_mult: {txt: 1.0}}\n", "unknown group.*txt"),
])
def test_bad_yaml_is_an_error_naming_the_file_and_option(tmp_path, text, message):
    config = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=message):
        parse_config(["--config", config])


def test_derived_values(tmp_path):
    cfg = parse_config(["--data_root", "D", "--goods_img_root", "elsewhere", "--output_dir", "o",
                        "--loss_weights", "{caption: 0}", "--model.caption", "{n_layer: 1, n_head: 2, n_embd: 8}"])
    assert cfg.data.goods_img_root == "elsewhere"
    assert cfg.data.photo_img_root == "D/Real400K/video/images"
    assert cfg.data.train_file == "D/train_file/train.txt"
    assert cfg.run.checkpoints == "o/checkpoints"
    assert cfg.model.caption is None  # weight 0: no decoder
    assert (cfg.data.max_query_len, cfg.data.max_title_len) == (32, 64)
    assert cfg.model.use_title_mask and cfg.model.use_query_mask
    original = parse_config(["--compat", "original"])
    assert (original.data.max_query_len, original.data.max_title_len) == (20, 90)  # the original's lengths
    assert not original.model.use_title_mask and not original.model.use_query_mask


# The original release's scripts (train_run.sh, video2goods_evaluate.sh, goods2video_evaluate.sh),
# argument lists as published, with the paths replaced.
ORIGINAL_TRAIN = """--local_rank=3 --embedding_size 512 --workers 10 --epochs 10 --decay_epochs 3 --batch_size 80
    --lr 0.01 --save_freq 50000 --checkpoints CKPTDIR --pretrained PRETRAIN.pth.tar --mixed_precision_training
    --finetune --train_file TRAIN.txt --cls_file CLUSTER.txt --cls_num 10 --sample_info_file TRAIN.txt
    --goods_img_root GI --goods_text_root GT --photo_img_root PI --photo_text_root PI --clip_length 5"""
ORIGINAL_EVALUATE = """--embedding_size 512 --workers 10 --epochs 10000 --decay_epochs 30 --batch_size 80 --lr 0.005
    --save_freq 50000 --finetune --mixed_precision_training --goods_img_root GI --goods_text_root GT
    --photo_img_root PI --photo_text_root PI --clip_length 5 --test_file {test} --evaluate --resume CKPT.pth.tar
    --output_dir {out}"""


def test_the_original_training_command_line_maps_to_the_same_values(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = parse_config(ORIGINAL_TRAIN.split())
    assert (cfg.data.batch_size, cfg.data.workers, cfg.optim.lr, cfg.optim.epochs, cfg.optim.decay_epochs) == \
        (80, 10, 0.01, 10, 3)
    assert cfg.run.save_freq == 50000 and cfg.run.checkpoints == "CKPTDIR"
    assert cfg.model.embed_dim == 512 and cfg.data.clip_length == cfg.model.clip_length == 5
    assert cfg.optim.mixed_precision_training and cfg.optim.train_vision
    # --pretrained names the released whole-model checkpoint: it initialises the weights.
    assert cfg.run.init_weights == "PRETRAIN.pth.tar" and cfg.model.pretrained is None
    assert cfg.data.cluster_file == "CLUSTER.txt" and cfg.data.train_file == "TRAIN.txt"
    assert cfg.data.photo_text_root == "PI"
    # The original's per-module factors and delta are its defaults here.
    assert dict(cfg.optim.lr_mult) == {"text": 0.01, "vision": 0.001, "fusion": 1.0, "frame": 0.01, "caption": 0.001,
                                       "category": 1.0}
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "--cls_num has no effect" in warned and "--sample_info_file has no effect" in warned


@pytest.mark.parametrize("test_file", ["photo_query.txt", "all_goods_177839.txt", "new_goods2video_goods.txt",
                                       "all_videos.txt"])
def test_the_original_evaluation_command_lines_map_to_the_same_values(test_file):
    cfg = parse_config(ORIGINAL_EVALUATE.format(test=test_file, out="OUT/photo").split())
    assert cfg.run.evaluate and cfg.run.resume == "CKPT.pth.tar" and cfg.data.test_file == test_file
    assert (cfg.data.batch_size, cfg.data.workers, cfg.optim.lr, cfg.optim.decay_epochs) == (80, 10, 0.005, 30)
    assert cfg.run.output_dir == "OUT/photo" and cfg.data.clip_length == 5 and cfg.optim.train_vision


def test_original_factor_flags_set_the_module_multipliers_and_delta():
    cfg = parse_config("--text_lr_factor 0.1 --image_lr_factor 0.2 --fusion_lr_factor 0.3 --video_fusion_factor 0.4 "
                       "--text_generation_factor 0.5 --delta_factor 10 --wd 0.05 --learning_rate 0.02 -b 8 -j 1 "
                       "-p 3 -s 7 --momentum 0.8 --start_epoch 2 --global_step 40".split())
    assert dict(cfg.optim.lr_mult) == {"text": 0.1, "vision": 0.2, "fusion": 0.3, "frame": 0.4, "caption": 0.5,
                                       "category": 1.0}
    assert cfg.loss.weights["consistency"] == 10.0
    assert (cfg.optim.weight_decay, cfg.optim.lr, cfg.optim.momentum) == (0.05, 0.02, 0.8)
    assert (cfg.data.batch_size, cfg.data.workers, cfg.run.print_freq, cfg.run.save_freq) == (8, 1, 3, 7)
    assert (cfg.run.start_epoch, cfg.run.start_step) == (2, 40)


def test_finetune_and_pretrained_keep_their_original_meanings(tmp_path):
    assert parse_config(["--finetune"]).optim.train_vision
    assert not parse_config(["--train_vision", "false"]).optim.train_vision
    with_path = parse_config(["--finetune", "runs/a.pth.tar"])
    assert with_path.run.init_weights == "runs/a.pth.tar"
    hub = parse_config(["--pretrained", "OFA-Sys/chinese-clip-vit-base-patch16"])
    assert hub.model.pretrained == "OFA-Sys/chinese-clip-vit-base-patch16" and hub.run.init_weights is None


def test_live_roots_are_refused_clearly():
    with pytest.raises(ConfigError, match="live-stream source is not supported"):
        parse_config(["--live_img_root", "L"])


def test_evaluate_flags_of_the_original_are_accepted_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        parse_config(["--evaluate_query2goods_query", "--using_other_transforms", "--train_file_part_num", "2"])
    assert sum("has no effect" in record.getMessage() for record in caplog.records) == 3


def test_every_option_has_a_help_text_with_its_default():
    text = build_parser().format_help()
    for option in OPTIONS:
        assert option.help
        assert option.flag_names[0] in text
    assert "(default: 5)" in text  # clip_length


def test_config_yaml_reproduces_the_resolved_configuration(tmp_path):
    cfg = parse_config(["--config", "tiny", "--data_root", "D", "--clip_length", "8", "--model.text.hidden_size", "32",
                        "--output_dir", str(tmp_path)])
    saved = write(tmp_path / "config.yaml", cfg.to_yaml())
    again = parse_config(["--config", saved])
    assert again == cfg and again.to_dict() == cfg.to_dict()
    # and it is still a config like any other: the command line overrides it
    assert parse_config(["--config", saved, "--output_dir", "elsewhere"]).run.checkpoints == "elsewhere/checkpoints"


def test_print_config_prints_yaml_and_reads_nothing(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "main_cross_domain_emb.py"), "--config", "tiny",
                             "--data_root", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out"),
                             "--clip_length", "7", "--print_config"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    import yaml
    printed = yaml.safe_load(result.stdout)
    assert printed["data"]["clip_length"] == 7 and printed["derived"]["model.clip_length"] == 7
    assert not (tmp_path / "out").exists() and not (tmp_path / "missing").exists()


def test_the_paper_config_is_the_original_training():
    cfg = parse_config(["--config", "paper", "--is_xbm"])
    assert (cfg.data.batch_size, cfg.data.max_query_len, cfg.data.max_title_len, cfg.data.clip_length) == (80, 20, 90, 5)
    assert cfg.data.compat == "original" and not cfg.model.use_title_mask and not cfg.model.use_query_mask
    assert (cfg.data.train_text, cfg.data.train_transform) == ("original", "original")
    assert cfg.loss.local_negatives and cfg.loss.logit_scale == 20.0 and not cfg.loss.learnable_scale
    assert cfg.loss.weights["consistency"] == 10.0 and cfg.loss.weights["itc"] == 0.0 and cfg.loss.log_terms == ("itc",)
    assert cfg.loss.xbm_mode == "original" and cfg.loss.xbm_size == 800  # 10 x batch size
    assert dict(cfg.model.caption) == {"n_layer": 4, "n_head": 8, "n_embd": 512, "n_positions": 32,
                                       "ignore_padding": False, "token_type_ids": True, "visual_projection": False,
                                       "attn_implementation": "eager"}
    assert not cfg.loss.normalize_query and parse_config([]).loss.normalize_query
    assert cfg.model.frame_init == "original" and cfg.model.frame_fp16 and cfg.model.embed_dim == 512
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.lr_schedule, cfg.optim.decay_epochs, cfg.optim.epochs) == \
        ("adam", 0.01, "step", 3, 10)
    assert cfg.optim.weight_decay == 0.0 and cfg.optim.train_vision
    assert (cfg.optim.clip_grad, cfg.optim.clip_grad_mode, cfg.optim.grad_scaler) == (5.0, "per_tower", "original")
    assert cfg.optim.mixed_precision_training and cfg.optim.amp_dtype == "fp16"
    assert dict(cfg.optim.lr_mult) == {"text": 0.01, "vision": 0.001, "fusion": 1.0, "frame": 0.01, "caption": 0.001,
                                       "category": 1.0}


def test_resume_latest_finds_the_newest_checkpoint_or_starts_fresh(tmp_path):
    assert parse_config(["--output_dir", str(tmp_path), "--resume", "latest"]).run.resume is None
    (tmp_path / "checkpoints").mkdir()
    for name in ("checkpoint_1_10.pth.tar", "checkpoint_2_20.pth.tar"):
        (tmp_path / "checkpoints" / name).write_bytes(b"x")
    assert parse_config(["--output_dir", str(tmp_path), "--resume", "latest"]).run.resume == \
        str(tmp_path / "checkpoints" / "checkpoint_2_20.pth.tar")


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    config = write(tmp_path / "c.yaml", "model: {text: {layer_norm_eps: 1e-12}}\n")
    assert parse_config(["--config", config]).model.text["layer_norm_eps"] == 1e-12
    assert parse_config(["--model.vision.layer_norm_eps", "1e-5"]).model.vision["layer_norm_eps"] == 1e-5


def test_resolve_reads_no_file_but_takes_what_the_probes_found():
    values = defaults() | {"seed": 0}
    values["data"].update(data_root="/no/such/root", hard_sample=True)
    values["run"].update(resume="latest", val_freq=1)   # a validation split that does not exist
    facts = FileFacts(latest_checkpoint="/no/such/checkpoint_3_30.pth.tar", cluster_file_present=True)
    found = resolve(values, facts)
    assert found.run.resume == "/no/such/checkpoint_3_30.pth.tar"
    assert found.data.cluster_file == "/no/such/root/train_file/cluster.txt"
    assert found.data.val_dir == "/no/such/root/val_file"
    nothing = resolve(values, FileFacts())
    assert nothing.run.resume is None and nothing.data.cluster_file is None


def test_a_missing_cluster_file_is_left_unset_and_a_present_one_found(tmp_path):
    assert parse_config(["--data_root", str(tmp_path), "--hard_sample"]).data.cluster_file is None
    (tmp_path / "train_file").mkdir()
    (tmp_path / "train_file" / "cluster.txt").write_text("1 2\n", encoding="utf-8")
    assert parse_config(["--data_root", str(tmp_path), "--hard_sample"]).data.cluster_file == \
        str(tmp_path / "train_file" / "cluster.txt")
    assert parse_config(["--data_root", str(tmp_path)]).data.cluster_file is None


def test_importing_the_configuration_imports_no_torch():
    code = "import sys, real20m.config; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


def test_the_momentum_encoder_is_built_when_a_computed_term_reads_a_momentum_output():
    from real20m.losses.terms import TERMS, register_term
    assert parse_config(["--config", "tiny"]).model.momentum_encoder is False
    assert "momentum" not in parse_config(["--config", "tiny"]).model.architecture()
    albef = parse_config(["--config", "tiny", "--loss.weights.albef_itc", "1", "--model.momentum", "0.99"]).model
    assert albef.momentum_encoder and albef.architecture()["momentum"] == 0.99
    # Any term that reads one, weighted or only logged: the registry decides, not a term's name.
    register_term("config_test_momentum_reader", reads=("momentum_fused",))(lambda inputs: None)
    try:
        assert parse_config(["--config", "tiny", "--loss.weights.config_test_momentum_reader", "0.5"]
                            ).model.momentum_encoder
        assert parse_config(["--config", "tiny", "--loss.log_terms", "[config_test_momentum_reader]"]
                            ).model.momentum_encoder
        assert not parse_config(["--config", "tiny", "--loss.weights.config_test_momentum_reader", "0"]
                                ).model.momentum_encoder
    finally:
        del TERMS["config_test_momentum_reader"]
    with pytest.raises(ConfigError, match=r"model.momentum must be in \[0, 1\]"):
        parse_config(["--config", "tiny", "--model.momentum", "1.5"])
