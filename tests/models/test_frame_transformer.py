import pytest
import torch

from real20m.models.frame_transformer import FrameTransformer


@pytest.fixture
def frame_transformer():
    torch.manual_seed(0)
    module = FrameTransformer(width=32, clip_length=5, heads=4).eval()
    with torch.no_grad():  # a non-trivial positional table, so broadcasting mistakes show
        module.positional_embedding.normal_(std=0.5)
    return module


def test_single_image_equals_repeated_frames(frame_transformer):
    image = torch.randn(3, 1, 32)
    with torch.no_grad():
        single = frame_transformer(image)
        repeated = frame_transformer(image.repeat(1, 5, 1))
    torch.testing.assert_close(single, repeated, rtol=0, atol=1e-6)


def test_output_is_unit_norm_and_depends_on_frame_order(frame_transformer):
    frames = torch.randn(2, 5, 32)
    with torch.no_grad():
        out = frame_transformer(frames)
        shuffled = frame_transformer(frames[:, [4, 3, 2, 1, 0]])
    assert out.shape == (2, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    assert (out - shuffled).abs().max() > 1e-4  # positional embedding makes order matter


@pytest.mark.parametrize("frames", [2, 6])
def test_other_frame_counts_are_rejected(frame_transformer, frames):
    with pytest.raises(ValueError, match=r"T in \(1, 5\)"):
        frame_transformer(torch.randn(2, frames, 32))


def test_in_proj_rows_are_query_key_value():
    module = FrameTransformer(width=16, clip_length=5, heads=2)
    attn = module.resblocks[0].attn
    assert attn.in_proj_weight.shape == (48, 16) and attn.batch_first
