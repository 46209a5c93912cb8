import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from real20m.losses.terms import IGNORE_INDEX
from real20m.models import build_model
from real20m.models.lr_groups import grouped_parameters
from real20m.models.qcd import IMAGENET_MEAN, IMAGENET_STD

from .conftest import VOCAB, deterministic_tiny_config, make_batch


def test_forward_embeddings_are_unit_norm(tiny_model):
    out = tiny_model(make_batch())
    assert set(out) == {"query", "query_raw", "title", "visual", "fused", "caption_logits", "caption_targets"}
    for name in ("query", "title", "visual", "fused"):
        emb = out[name]
        assert emb.shape == (4, 512), name
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4), msg=name)
    torch.testing.assert_close(torch.nn.functional.normalize(out["query_raw"], dim=-1), out["query"])


def random_frames(count, size=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_uint8_pixels_are_normalised_as_torchvision_to_tensor_and_normalize(tiny_model):
    frames = random_frames(3)
    before = torch.stack([TF.normalize(TF.to_tensor(Image.fromarray(frame)), IMAGENET_MEAN, IMAGENET_STD)
                          for frame in frames])  # what the loader workers used to send
    normalised = tiny_model.normalize_pixels(torch.from_numpy(frames).permute(0, 3, 1, 2))
    assert normalised.dtype == torch.float32
    assert torch.equal(normalised, before)  # bitwise: the same operations in the same order
    assert tiny_model.normalize_pixels(before) is before  # float pixels are already normalised


def test_pixel_statistics_stay_out_of_checkpoints(tiny_model):
    assert not any(name.startswith("pixel_") for name in tiny_model.state_dict())
    assert {name for name, _ in tiny_model.named_buffers() if name.startswith("pixel_")} == {"pixel_mean", "pixel_std"}


def test_uint8_items_embed_as_their_normalised_float_pixels(tiny_model):
    tiny_model.eval()
    batch = make_batch(batch_size=2)
    pixels = torch.from_numpy(random_frames(10, seed=1)).permute(0, 3, 1, 2).reshape(2, 5, 3, 64, 64)
    with torch.no_grad():
        raw = tiny_model.encode_items(batch["title_ids"], batch["title_mask"], pixels)
        normalised = tiny_model.encode_items(batch["title_ids"], batch["title_mask"],
                                             tiny_model.normalize_pixels(pixels))
    assert torch.equal(raw.fused, normalised.fused)


def test_goods_single_image_equals_repeated_image(tiny_model):
    tiny_model.eval()
    batch = make_batch(frames=1)
    titles, mask, image = batch["title_ids"], batch["title_mask"], batch["pixels"]
    with torch.no_grad():
        single = tiny_model.encode_items(titles, mask, image)
        repeated = tiny_model.encode_items(titles, mask, image.repeat(1, 5, 1, 1, 1))
    torch.testing.assert_close(single.fused, repeated.fused, rtol=0, atol=1e-6)
    torch.testing.assert_close(single.pool_weights.sum(dim=1), torch.ones(4))


def test_title_mask_is_ignored_in_original_mode(tiny_model):
    tiny_model.eval()
    batch = make_batch(frames=1)
    mask = batch["title_mask"].clone()
    mask[:, 6:] = 0
    with torch.no_grad():
        masked = tiny_model.encode_items(batch["title_ids"], mask, batch["pixels"]).title
        tiny_model.use_title_mask = False
        unmasked = tiny_model.encode_items(batch["title_ids"], mask, batch["pixels"]).title
        no_mask = tiny_model.encode_items(batch["title_ids"], None, batch["pixels"]).title
    torch.testing.assert_close(unmasked, no_mask)
    assert (masked - unmasked).abs().max() > 1e-4


def test_lr_groups_partition_the_parameters(tiny_model):
    groups = grouped_parameters(tiny_model.named_parameters(), tiny_model.LR_GROUPS)
    assert list(groups) == ["text", "vision", "fusion", "frame", "caption", "category"]
    assert groups["category"] == []   # no category head without its loss term
    assert groups["fusion"] == list(tiny_model.pooling.parameters())
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in tiny_model.parameters()}
    assert all(groups[name] for name in groups if name != "category")


def caption_loss(model, visual, query_ids, query_mask):
    logits, targets = model.caption(visual, query_ids, query_mask)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def test_no_caption_decoder_means_no_caption_outputs():
    model = build_model(deterministic_tiny_config(caption=None), vocab_size=VOCAB)
    assert "caption_logits" not in model(make_batch())
    assert grouped_parameters(model.named_parameters(), model.LR_GROUPS)["caption"] == []


def test_caption_outputs_are_next_token_logits_with_padding_ignored(tiny_model):
    batch = make_batch()
    out = tiny_model(batch)
    assert out["caption_logits"].shape[:2] == out["caption_targets"].shape == (4, batch["query_ids"].shape[1] - 1)
    assert torch.equal(out["caption_targets"][1], batch["query_ids"][1, 1:])
    assert (out["caption_targets"][0, batch["query_ids"].shape[1] // 2 - 1:] == IGNORE_INDEX).all()


def test_caption_loss_decreases_and_ignores_padding(tiny_model):
    batch = make_batch()
    visual = torch.nn.functional.normalize(torch.randn(4, 512), dim=-1)
    optimizer = torch.optim.Adam(tiny_model.caption.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = caption_loss(tiny_model, visual, batch["query_ids"], batch["query_mask"])
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses

    other_padding = batch["query_ids"].masked_fill(batch["query_mask"] == 0, 7)
    with torch.no_grad():
        a = caption_loss(tiny_model, visual, batch["query_ids"], batch["query_mask"])
        b = caption_loss(tiny_model, visual, other_padding, batch["query_mask"])
    torch.testing.assert_close(a, b)


def cross_attention_gradients(attn_implementation):
    caption = {**deterministic_tiny_config()["caption"], "attn_implementation": attn_implementation}
    model = build_model(deterministic_tiny_config(caption=caption), vocab_size=VOCAB)
    batch = make_batch()
    visual = torch.nn.functional.normalize(torch.randn(4, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    caption_loss(model, visual, batch["query_ids"], batch["query_mask"]).backward()
    return {name: param.grad for name, param in model.caption.named_parameters()
            if ".crossattention.q_attn." in name or ".ln_cross_attn." in name}


def test_eager_attention_gives_the_constant_cross_attention_exactly_zero_gradient():
    """One encoder position: the cross-attention softmax is 1 whatever its query and key."""
    eager = cross_attention_gradients("eager")
    assert eager and all(torch.count_nonzero(grad) == 0 for grad in eager.values())
    assert any(torch.count_nonzero(grad) for grad in cross_attention_gradients(None).values())  # rounding noise


def _loss_and_grads(model, batch):
    model.zero_grad()
    out = model(batch)
    loss = (out["query"] * out["fused"]).sum() + (out["title"] * out["visual"]).sum()
    loss = loss + caption_loss(model, out["visual"], batch["query_ids"], batch["query_mask"])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_same_loss_and_grads(tiny_model):
    batch = make_batch()
    tiny_model.train()
    loss, grads = _loss_and_grads(tiny_model, batch)
    tiny_model.set_gradient_checkpointing(True)
    assert tiny_model.text.encoder.encoder.layer[0].gradient_checkpointing
    assert tiny_model.frame.gradient_checkpointing
    loss_ckpt, grads_ckpt = _loss_and_grads(tiny_model, batch)
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads_ckpt.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("backbone", ["clip", "timm"])
def test_other_backbones_build_and_embed(backbone):
    cfg = deterministic_tiny_config(backbone=backbone, caption=None, embed_dim=32)
    if backbone == "clip":
        cfg["text"] = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=32)
        cfg["vision"] = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=64, patch_size=16)
    else:
        cfg["timm_name"] = "test_convnext"
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=VOCAB).eval()
    with torch.no_grad():
        out = model(make_batch(batch_size=2))
    torch.testing.assert_close(out["fused"].norm(dim=-1), torch.ones(2))


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="unknown model.backbone 'vgg'"):
        build_model(deterministic_tiny_config(backbone="vgg"), vocab_size=VOCAB)


def test_pretrained_local_folder_supplies_towers_and_projections(tmp_path):
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    tiny = deterministic_tiny_config()
    torch.manual_seed(0)
    pair = ChineseCLIPModel(ChineseCLIPConfig(text_config=dict(tiny["text"], vocab_size=VOCAB),
                                              vision_config=tiny["vision"], projection_dim=512))
    pair.save_pretrained(tmp_path)
    model = build_model(dict(tiny, pretrained=str(tmp_path), text=None, vision=None), vocab_size=VOCAB)
    torch.testing.assert_close(model.text.projection.weight, pair.text_projection.weight)
    torch.testing.assert_close(model.vision.projection.weight, pair.visual_projection.weight)
    torch.testing.assert_close(model.vision.encoder.post_layernorm.bias, pair.vision_model.post_layernorm.bias)
    rebuilt = model.resolved_config()
    assert rebuilt["pretrained"] is None and rebuilt["vision"]["image_size"] == 64


def test_a_timm_tower_with_constructor_arguments_rebuilds_from_its_resolved_config():
    cfg = deterministic_tiny_config(backbone="timm", timm_name="resnet10t",
                                    timm_args={"channels": [8, 16, 32, 64], "stem_width": 8})
    model = build_model(cfg, vocab_size=VOCAB)
    resolved = model.resolved_config()
    assert resolved["timm_args"] == {"channels": [8, 16, 32, 64], "stem_width": 8}
    build_model(resolved, vocab_size=VOCAB).load_state_dict(model.state_dict())  # strict: same shapes
