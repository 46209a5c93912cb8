import torch
import torch.nn.functional as F

from real20m.models.pooling import AttentionPooling


def test_weights_sum_to_one_and_output_unit_norm():
    torch.manual_seed(0)
    pooling = AttentionPooling(embed_dim=16)
    fused, weights = pooling(torch.randn(4, 16) * 3, torch.randn(4, 16))
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))
    assert (weights > 0).all()
    torch.testing.assert_close(fused.norm(dim=-1), torch.ones(4))


def test_title_comes_first():
    pooling = AttentionPooling(embed_dim=8)
    with torch.no_grad():  # all weight on input 0
        pooling.projection.weight.zero_()
        pooling.projection.bias.copy_(torch.tensor([50.0, -50.0]))
    title, visual = torch.randn(2, 8), torch.randn(2, 8)
    fused, weights = pooling(title, visual)
    torch.testing.assert_close(fused, F.normalize(title, dim=-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(weights[:, 0], torch.ones(2))
