"""Fixtures shared across the test folders."""
import pytest

from real20m.datasets.synthetic import generate


def synthetic_dataset(tmp_path_factory, name: str, seed: int = 0, **sizes) -> str:
    """A synthetic dataset in the Real400K layout in a fresh temporary folder; ``sizes`` as the generator takes them."""
    root = tmp_path_factory.mktemp(name)
    generate(str(root), seed=seed, **sizes)
    return str(root)


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory):
    """A small synthetic dataset in the Real400K layout (16 train / 4 test / 4 validation queries, 32 px images)."""
    return synthetic_dataset(tmp_path_factory, "synthetic", num_queries=16, num_test_queries=4, num_val_queries=4,
                             goods_per_query=2, videos_per_query=2, frames_per_video=5, image_size=32)
