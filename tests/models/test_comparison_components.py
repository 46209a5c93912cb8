"""The comparison components: X-CLIP's frame aggregation, CLIP4Cir's Combiner fusion,
timm ResNet-d vision towers and BERT / RoBERTa text towers. Each is checked against a reference
computed independently of its module (numpy from its weights, or a perturbation that only the
described structure survives), and trains: a short run through the trainer lowers its loss."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from real20m.cli.train import main as train_main
from real20m.config import build_parser, parse_config
from real20m.engine.trainer import Trainer
from real20m.errors import InputError
from real20m.models import build_model
from real20m.models.combiner import Combiner
from real20m.models.component_registry import FRAME_AGGREGATIONS, FUSIONS, UnknownComponentError
from real20m.models.xclip import XClipAggregation
from real20m.utils.distributed import DistEnv
from tests.engine.test_trainer import recorded_losses

REPO = Path(__file__).resolve().parents[2]
SINGLE_CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True, backend=None)
VOCAB = 300


def tiny_architecture(*extra: str) -> dict:
    return parse_config(["--config", "tiny", "--image_size", "32", *extra]).model.architecture()


# --------------------------------------------------------------------------------- configuration
def test_the_configuration_lists_and_checks_the_registered_names():
    choices = {action.dest: action.choices for action in build_parser()._actions}
    assert choices["model.frame_aggregation"] == ("mean", "transformer", "xclip") == FRAME_AGGREGATIONS.names()
    assert {"attention", "combiner", "title_only", "visual_only"} <= set(choices["model.fusion"])
    cfg = parse_config(["--config", "tiny", "--frame_aggregation", "xclip", "--fusion", "combiner"])
    assert (cfg.model.frame_aggregation, cfg.model.fusion) == ("xclip", "combiner")
    # A YAML or dotted value is checked at resolution: one line naming the option and the choices.
    with pytest.raises(UnknownComponentError, match=r"unknown model.fusion 'combinr'; expected one of \[.*'combiner'"):
        parse_config(["--config", "tiny", "--model.fusion", "combinr"])
    with pytest.raises(InputError, match="unknown model.frame_aggregation 'x_clip'"):
        parse_config(["--config", "tiny", "--model.frame_aggregation", "x_clip"])


class LearnedBlend(nn.Module):
    """normalize(s * title + (1 - s) * visual) with one learned s = sigmoid(logit): a fusion
    registered by this file alone."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(()))

    def forward(self, title, visual):
        share = torch.sigmoid(self.logit)
        weights = torch.stack([share, 1 - share]).expand(title.shape[0], 2)
        return F.normalize(share * title + (1 - share) * visual, dim=-1), weights


@pytest.fixture
def learned_blend():
    FUSIONS.register("test_blend", LearnedBlend)
    yield "test_blend"
    FUSIONS._entries.pop("test_blend")


def test_a_fusion_registered_from_outside_trains_through_the_entry_point(learned_blend, tiny_data_root, tmp_path):
    assert learned_blend in next(action.choices for action in build_parser()._actions if action.dest == "model.fusion")
    train_main(["--config", "tiny", "--fusion", learned_blend, "--data_root", tiny_data_root, "--output_dir",
                str(tmp_path), "--workers", "0", "--batch_size", "4", "--image_size", "32", "--vocab_size", "300",
                "--max_steps", "2"])
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.pth.tar", map_location="cpu", weights_only=True)
    assert checkpoint["model_cfg"]["fusion"] == learned_blend and checkpoint["global_step"] == 2
    assert checkpoint["model"]["pooling.logit"] != 0   # in the "fusion" LR group, and trained
    with pytest.raises(ValueError, match="already registered"):
        FUSIONS.register(learned_blend, LearnedBlend)


# ------------------------------------------------------------------------------------- Combiner
def numpy_combiner(combiner: Combiner, title: np.ndarray, visual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Combiner's (output, gate) recomputed in float64 from its weights."""
    w = {name: value.detach().double().numpy() for name, value in combiner.state_dict().items()}

    def linear(x, prefix):
        return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    title, visual = unit(title), unit(visual)
    relu = lambda x: np.maximum(x, 0)  # noqa: E731
    projected = np.concatenate([relu(linear(title, "title_projection")),
                                relu(linear(visual, "visual_projection"))], axis=-1)
    gate = 1 / (1 + np.exp(-linear(relu(linear(projected, "gate.0")), "gate.2")))
    mix = linear(relu(linear(projected, "mix.0")), "mix.2")
    return unit(mix + gate * title + (1 - gate) * visual), gate[:, 0]


def test_the_combiner_gates_and_mixes_as_recomputed_from_its_weights():
    torch.manual_seed(0)
    combiner = Combiner(embed_dim=16)
    title, visual = torch.randn(6, 16, dtype=torch.float64), torch.randn(6, 16, dtype=torch.float64) * 3
    combiner.double()
    fused, weights = combiner(title, visual)
    expected, gate = numpy_combiner(combiner, title.numpy(), visual.numpy())
    np.testing.assert_allclose(fused.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(weights[:, 0].detach().numpy(), gate, rtol=1e-12)
    np.testing.assert_allclose(weights.sum(dim=1).detach().numpy(), 1.0)
    assert 0 < gate.min() and gate.max() < 1 and np.ptp(gate) > 0   # a per-item gate, not a constant


def test_a_saturated_gate_without_mixture_returns_one_modality():
    combiner = Combiner(embed_dim=8)
    with torch.no_grad():
        combiner.mix[2].weight.zero_()
        combiner.mix[2].bias.zero_()
        combiner.gate[2].weight.zero_()
        combiner.gate[2].bias.fill_(60.0)   # sigmoid(60) = 1: the title alone
    title, visual = torch.randn(3, 8), torch.randn(3, 8)
    fused, weights = combiner(title, visual)
    torch.testing.assert_close(fused, F.normalize(title, dim=-1))
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.0]] * 3))


# --------------------------------------------------------------------------------------- X-CLIP
def numpy_message_exchange(layer, frames: np.ndarray, heads: int) -> np.ndarray:
    """X-CLIP's cross-frame fusion recomputed in float64: m = W e + b per frame, then
    m + MultiHeadAttention(LN(m)) over the T messages of each clip."""
    w = {name: value.detach().double().numpy() for name, value in layer.state_dict().items()}
    messages = frames @ w["message.weight"].T + w["message.bias"]
    mean, var = messages.mean(-1, keepdims=True), messages.var(-1, keepdims=True)
    h = (messages - mean) / np.sqrt(var + 1e-5) * w["ln_message.weight"] + w["ln_message.bias"]
    q, k, v = np.split(h @ w["message_attn.in_proj_weight"].T + w["message_attn.in_proj_bias"], 3, axis=-1)
    batch, length, width = frames.shape
    split = lambda x: x.reshape(batch, length, heads, width // heads).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(width // heads)
    attention = np.exp(scores - scores.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    mixed = (attention @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)
    return messages + mixed @ w["message_attn.out_proj.weight"].T + w["message_attn.out_proj.bias"]


@pytest.fixture
def xclip():
    torch.manual_seed(0)
    return XClipAggregation(width=16, clip_length=5, heads=2).double().eval()


def test_messages_are_exchanged_across_the_frames_as_recomputed(xclip):
    frames = torch.randn(3, 5, 16, dtype=torch.float64)
    layer = xclip.communication[0]
    messages = layer.exchange_messages(frames)
    assert messages.shape == (3, 5, 16)
    np.testing.assert_allclose(messages.detach().numpy(), numpy_message_exchange(layer, frames.numpy(), heads=2),
                               rtol=1e-10, atol=1e-12)
    assert xclip.communicate(frames).shape == (3, 5, 16)
    out = xclip(frames)
    assert out.shape == (3, 16)
    np.testing.assert_allclose(out.norm(dim=-1).detach().numpy(), 1.0)


def test_a_frame_hears_of_the_others_only_through_the_messages(xclip):
    frames = torch.randn(2, 5, 16, dtype=torch.float64)
    perturbed = frames.clone()
    perturbed[:, 3] += torch.randn(2, 16, dtype=torch.float64)
    others = [0, 1, 2, 4]
    layer = xclip.communication[0]
    # Diffusion is masked to a frame and its own message: with the messages held fixed, changing
    # frame 3 changes frame 3's output alone.
    messages = layer.exchange_messages(frames)
    held = layer.diffuse(perturbed, messages) - layer.diffuse(frames, messages)
    assert torch.equal(held[:, others], torch.zeros_like(held[:, others])) and held[:, 3].abs().max() > 1e-3
    # Through the exchanged messages the other frames do change...
    changed = xclip.communicate(perturbed) - xclip.communicate(frames)
    assert changed[:, others].abs().amax(dim=-1).min() > 1e-6
    # ...and not at all once the exchange is cut (messages stay per frame).
    with torch.no_grad():
        layer.message_attn.out_proj.weight.zero_()
        layer.message_attn.out_proj.bias.zero_()
    cut = xclip.communicate(perturbed) - xclip.communicate(frames)
    torch.testing.assert_close(cut[:, others], torch.zeros_like(cut[:, others]), rtol=0, atol=1e-12)


def test_a_single_image_is_a_clip_of_identical_frames(xclip):
    image = torch.randn(4, 1, 16, dtype=torch.float64)
    torch.testing.assert_close(xclip(image), xclip(image.expand(-1, 5, -1)))
    with pytest.raises(ValueError, match=r"T in \(1, 5\)"):
        xclip(torch.randn(4, 3, 16, dtype=torch.float64))


def test_gradient_checkpointing_computes_the_same_output_and_gradients():
    torch.manual_seed(0)
    plain = XClipAggregation(width=16, clip_length=5, heads=2, init="original")
    recomputed = XClipAggregation(width=16, clip_length=5, heads=2)
    recomputed.load_state_dict(plain.state_dict())
    recomputed.gradient_checkpointing = True
    frames = torch.randn(3, 5, 16)
    for module in (plain, recomputed):
        module(frames).square().sum().backward()
    torch.testing.assert_close(recomputed(frames), plain(frames))
    for (name, a), (_, b) in zip(plain.named_parameters(), recomputed.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


# --------------------------------------------------------------------------------------- towers
@pytest.mark.parametrize("backbone, encoder", [("timm_bert", "BertModel"), ("timm_roberta", "RobertaModel")])
def test_bert_and_roberta_text_towers_embed_and_rebuild_from_the_checkpoint_config(backbone, encoder):
    torch.manual_seed(0)
    model = build_model(tiny_architecture("--backbone", backbone), vocab_size=VOCAB).eval()
    assert type(model.text.encoder).__name__ == encoder
    ids = torch.randint(1, VOCAB, (3, 9))
    padded = torch.cat([ids, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(3, 9), torch.zeros(3, 4)], dim=1).long()
    with torch.no_grad():
        query = model.encode_query(ids, torch.ones_like(ids))
        # Masked padding changes nothing (RoBERTa counts positions from the pad id, BERT from 0).
        torch.testing.assert_close(model.encode_query(padded, mask), query, rtol=0, atol=1e-5)
        assert query.shape == (3, 512) and query.std(dim=0).mean() > 0
        # The longest text it embeds: 64 positions, less those RoBERTa leaves unused (up to the pad id, 0).
        longest = model.max_text_tokens
        assert longest == {"timm_bert": 64, "timm_roberta": 63}[backbone]
        assert model.encode_query(torch.randint(1, VOCAB, (1, longest)), torch.ones(1, longest)).shape == (1, 512)
        rebuilt = build_model(model.resolved_config(), vocab_size=VOCAB).eval()
        rebuilt.load_state_dict(model.state_dict())
        torch.testing.assert_close(rebuilt.encode_query(ids, torch.ones_like(ids)), query)


@pytest.mark.parametrize("timm_name", ["resnet18d", "resnet50d"])
def test_resnet_d_towers_from_timm_have_the_deep_stem_and_average_downsampling(timm_name):
    torch.manual_seed(0)
    model = build_model(tiny_architecture("--timm_name", timm_name), vocab_size=VOCAB).eval()
    encoder = model.vision.encoder
    # ResNet-D: a 3-convolution stem, and downsampling shortcuts that average-pool before a 1x1 conv.
    assert isinstance(encoder.conv1, nn.Sequential) and sum(isinstance(m, nn.Conv2d) for m in encoder.conv1) == 3
    assert isinstance(encoder.layer2[0].downsample[0], nn.AvgPool2d)
    assert encoder.num_features == (128 if timm_name == "resnet18d" else 512)   # tiny channels [16..128]
    pixels = torch.randint(0, 256, (2, 5, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        items = model.encode_items(torch.randint(1, VOCAB, (2, 7)), None, pixels)
    assert items.visual.shape == (2, 512)


# ------------------------------------------------------------------------------------- training
# (options, a parameter of the component itself) for each comparison component.
COMPONENTS = {
    "xclip": (("--frame_aggregation", "xclip"), "frame.communication.0.message.weight"),
    "combiner": (("--fusion", "combiner"), "pooling.gate.2.weight"),
    "bert": (("--backbone", "timm_bert"), "text.encoder.embeddings.word_embeddings.weight"),
    "roberta": (("--backbone", "timm_roberta"), "text.encoder.embeddings.word_embeddings.weight"),
    "resnet18d": (("--timm_name", "resnet18d"), "vision.encoder.conv1.0.weight"),
}


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_a_short_training_run_lowers_the_loss(tiny_data_root, tmp_path, component):
    options, parameter = COMPONENTS[component]
    cfg = parse_config(["--config", str(REPO / "configs" / "tiny.yaml"), "--data_root", tiny_data_root,
                        "--output_dir", str(tmp_path), "--batch_size", "8", "--workers", "0", "--image_size", "32",
                        "--vocab_size", "300", "--max_steps", "16", "--lr", "0.002", "--warmup_steps", "0",
                        "--seed", "0", *options])
    trainer = Trainer(cfg, SINGLE_CPU)
    initial = trainer.model.state_dict()[parameter].clone()
    totals = recorded_losses(trainer)
    trainer.fit()
    assert len(totals) == 16
    # Over 3 seeds the mean total of the first 4 steps was 10.8-12.2, of the last 4 5.8-7.1.
    first, last = np.mean(totals[:4]), np.mean(totals[-4:])
    assert last < 0.8 * first, totals
    assert not torch.equal(trainer.model.state_dict()[parameter], initial)   # the component itself trained
