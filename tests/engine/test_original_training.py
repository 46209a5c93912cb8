"""Training options the original release and the paper's ablations need: each one trains."""
import pytest
import torch

from real20m.config import OptimConfig
from real20m.engine.trainer import CappedGradScaler, Trainer, clip_gradients
from tests.engine.test_trainer import SINGLE_CPU, tiny_argv, tiny_cfg


def trained(data_root, output_dir, *extra, steps=2):
    trainer = Trainer(tiny_cfg(data_root, output_dir, "--max_steps", str(steps), *extra), SINGLE_CPU)
    before = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    trainer.fit()
    return trainer, before


def changed(trainer, before, prefix):
    return any(not torch.equal(value, before[name]) for name, value in trainer.model.state_dict().items()
               if name.startswith(prefix))


def test_a_frozen_vision_tower_does_not_change(tiny_data_root, tmp_path):
    trainer, before = trained(tiny_data_root, tmp_path, "--train_vision", "false")
    assert not changed(trainer, before, "vision.") and changed(trainer, before, "text.")
    assert "vision" not in {group["name"] for group in trainer.optimizer.param_groups}


@pytest.mark.parametrize("switch, absent", [
    (("--frame_aggregation", "mean"), "frame."),
    (("--fusion", "title_only"), "pooling."),
    (("--fusion", "visual_only"), "pooling."),
])
def test_each_ablation_switch_changes_the_model_and_trains(tiny_data_root, tmp_path, switch, absent):
    trainer, before = trained(tiny_data_root, tmp_path, *switch)
    assert not any(name.startswith(absent) for name in before)  # the ablated part is not built
    assert changed(trainer, before, "text.") and changed(trainer, before, "vision.")
    assert trainer.global_step == 2


def test_the_original_training_options_train_together(tiny_data_root, tmp_path):
    trainer, before = trained(tiny_data_root, tmp_path, "--local_negatives", "--delta_factor", "10",
                              "--loss.log_terms", "[itc]", "--is_xbm", "--xbm_mode", "original",
                              "--frame_init", "original", "--clip_grad_mode", "per_tower",
                              "--model.caption", "{ignore_padding: false, token_type_ids: true, "
                                                 "attn_implementation: eager}", "--normalize_query", "false",
                              "--train_text", "original", "--train_transform", "original", "--compat", "original",
                              steps=3)
    assert changed(trainer, before, "frame.") and changed(trainer, before, "caption.")
    assert int(trainer.criterion.memory.ptr) == 3 * 4  # three batches of 4 written so far


def test_per_tower_clipping_leaves_the_fusion_layers_unclipped():
    model = torch.nn.Module()
    model.text, model.vision, model.fusion = (torch.nn.Linear(2, 2) for _ in range(3))
    for param in model.parameters():
        param.grad = torch.full_like(param, 10.0)
    norms = clip_gradients(model, OptimConfig(clip_grad=1.0, clip_grad_mode="per_tower"))
    assert set(norms) == {"grad_norm_text", "grad_norm_vision"}
    for tower in (model.text, model.vision):
        total = torch.cat([param.grad.flatten() for param in tower.parameters()]).norm()
        assert total == pytest.approx(1.0, rel=1e-4)
    assert torch.equal(model.fusion.weight.grad, torch.full((2, 2), 10.0))


def test_the_original_grad_scaler_stops_growing_at_its_maximum():
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    scaler = CappedGradScaler("cpu", init_scale=4.0, growth_interval=1, max_scale=16.0)
    scales = []
    for _ in range(4):
        scaler.scale(weight.sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        scales.append(scaler.get_scale())
    assert scales == [8.0, 16.0, 16.0, 16.0]


def test_without_query_guidance_goods_and_videos_of_one_query_are_contrasted(tiny_data_root, tmp_path):
    trainer, before = trained(tiny_data_root, tmp_path, "--query_guidance", "false")
    assert trainer.cfg.data.item_pairs and trainer.model.caption is None
    assert {name for name, weight in trainer.criterion.weights.items() if weight} == {"pair"}
    keys = next(iter(trainer.sampler))
    sample = trainer.dataset[keys[0]]
    assert sample["source"] == "goods" and sample["pair"]["source"] == "photo"
    assert sample["query"] == sample["pair"]["query"]  # one query's goods item and video
    assert changed(trainer, before, "vision.") and changed(trainer, before, "pooling.")


def test_gpu_decode_mode_trains_and_evaluates_with_the_decoder_on_the_cpu(tiny_data_root, tmp_path):
    """The byte-sending loader and the device decoder end to end (nvjpeg itself needs CUDA)."""
    from real20m.cli.train import run as train_main
    trainer, before = trained(tiny_data_root, tmp_path / "run", "--gpu_decode")
    assert trainer.decoder is not None and changed(trainer, before, "vision.")
    assert train_main(tiny_argv(tiny_data_root, tmp_path / "eval", "--gpu_decode", "--evaluate", "--resume",
                                str(tmp_path / "run" / "checkpoints" / "last.pth.tar"),
                                "--test_file", f"{tiny_data_root}/test_file/goods_gallery.txt")) > 0
