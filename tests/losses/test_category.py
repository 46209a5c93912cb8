"""The goods-category term against a numpy cross-entropy (an ignored row left out), its message when
the model has no head, labels gathered across ranks as integers, a short training run that lowers
it, a run without it that has no head, the missing cluster file named, and a checkpoint with the
head evaluated."""
import os

import numpy as np
import pytest
import torch

from real20m.cli.train import run as train_run
from real20m.config import parse_config
from real20m.datasets.annotations import AnnotationError
from real20m.errors import InputError
from real20m.factory import build_model
from real20m.losses import QCDLoss
from real20m.losses.contrastive import gather_with_grad
from real20m.losses.terms import TERMS, register_term
from real20m.model_source import inspect_source
from tests.utils.process_group import run_in_processes

from .comparison_training import REPO, mean, train_term_alone
from .test_qcd_loss import outputs

LOGITS = np.array([[2.0, -1.0, 0.5, 0.0], [0.3, 0.1, -0.2, 1.5], [-0.5, 0.0, 1.0, 2.0]])
LABELS = [2, -100, 0]
TOWERS_AT_BASE_LR = ("--optim.lr_mult.text", "1", "--optim.lr_mult.vision", "1", "--optim.lr_mult.frame", "1")


def numpy_cross_entropy(logits, labels):
    """Mean of -log softmax(logits)[label] over the rows whose label is not -100."""
    rows = [(row, label) for row, label in zip(logits, labels) if label != -100]
    return np.mean([np.log(np.exp(row).sum()) - row[label] for row, label in rows])


def with_categories(labels, logits=LOGITS):
    return {**outputs(), "category_logits": torch.tensor(logits, dtype=torch.float32),
            "category": torch.tensor(labels, dtype=torch.int64)}


def test_the_term_is_the_cross_entropy_of_the_known_rows():
    objective = QCDLoss({"caption": 0.0, "category": 1.0})
    total, terms = objective(with_categories(LABELS))
    assert terms["category"] == pytest.approx(numpy_cross_entropy(LOGITS, LABELS), rel=1e-6)
    # Row 1 is ignored: any label there would change the value.
    assert terms["category"] != pytest.approx(objective(with_categories([2, 3, 0]))[1]["category"], rel=1e-3)


def test_a_batch_of_unknown_categories_gives_zero():
    _, terms = QCDLoss({"caption": 0.0, "category": 1.0})(with_categories([-100, -100, -100]))
    assert terms["category"] == 0.0


def test_a_model_without_the_head_is_named_in_the_message():
    with pytest.raises(KeyError, match="the category term needs a model with a category head"):
        QCDLoss({"caption": 0.0, "category": 1.0})(outputs())


@pytest.fixture
def label_gathering_term():
    """A term gathering the labels like an embedding; records what it was handed."""
    seen = []

    @register_term("test_gathered_labels", gathers=("category",))
    def gathered_labels(inputs):
        seen.append(inputs.gathered["category"])
        return inputs.gathered["category"].float().sum() * 0
    yield seen
    del TERMS["test_gathered_labels"]


def test_a_term_may_gather_the_labels_and_gets_integers(label_gathering_term):
    QCDLoss({"caption": 0.0, "test_gathered_labels": 1.0})(with_categories(LABELS))
    assert label_gathering_term[0].dtype == torch.int64 and label_gathering_term[0].tolist() == LABELS


def _gather_labels(env, out_dir):
    labels = torch.tensor([10 * env.rank, 10 * env.rank + 1], dtype=torch.int64)
    torch.save(gather_with_grad(labels), os.path.join(out_dir, f"rank{env.rank}.pt"))


def test_two_ranks_gather_int64_labels_in_rank_order(tmp_path):
    run_in_processes(_gather_labels, 2, str(tmp_path))
    for rank in range(2):
        gathered = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert gathered.dtype == torch.int64 and gathered.tolist() == [0, 1, 10, 11]


class VocabularyOnly:
    """What building a model reads of a tokenizer."""
    pad_token_id = 0

    def __len__(self):
        return 300


def tiny_config(data_root, output_dir, *extra):
    return parse_config(["--config", str(REPO / "configs" / "tiny.yaml"), "--data_root", data_root,
                         "--output_dir", str(output_dir), "--image_size", "32", "--vocab_size", "300", *extra])


def test_training_on_the_term_lowers_it_and_its_checkpoint_evaluates(tiny_data_root, tmp_path):
    # The towers must learn to tell the categories apart: at the paper's 1e-2 / 1e-3 multipliers of
    # the base LR they need far more than these 60 steps.
    values = train_term_alone("category", tiny_data_root, tmp_path, 60, "--lr", "0.005", *TOWERS_AT_BASE_LR)
    assert mean(values[-10:]) < 0.7 * mean(values[:10]), values
    checkpoint = tmp_path / "checkpoints" / "last.pth.tar"
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    names = state["config"]["data"]["category_names"]
    assert names == sorted(set(line.split("\t")[1] for line in open(
        os.path.join(tiny_data_root, "train_file", "cluster.txt"), encoding="utf-8") if line.strip()))
    assert state["model_cfg"]["category_classes"] == len(names) == state["model"]["category_head.bias"].shape[0]
    # --evaluate rebuilds the head from the checkpoint's architecture and loads it strictly.
    items = os.path.join(tiny_data_root, "test_file", "goods_gallery.txt")
    cfg = tiny_config(tiny_data_root, tmp_path / "eval", "--evaluate", "--resume", str(checkpoint),
                      "--test_file", items)
    model, _ = inspect_source(str(checkpoint)).load(cfg)
    assert torch.equal(model.category_head.weight, state["model"]["category_head.weight"])
    train_run(["--evaluate", "--resume", str(checkpoint), "--data_root", tiny_data_root, "--test_file", items,
               "--output_dir", str(tmp_path / "eval"), "--batch_size", "4", "--workers", "0"])
    assert os.listdir(tmp_path / "eval")


def test_without_the_term_there_is_no_head_and_no_labels(tiny_data_root, tmp_path):
    cfg = tiny_config(tiny_data_root, tmp_path)
    assert not cfg.data.category_labels and cfg.model.category_classes == 0
    assert "category_classes" not in cfg.model.architecture()
    assert build_model(cfg.model, VocabularyOnly(), seed=0).category_head is None
    weighted = tiny_config(tiny_data_root, tmp_path, "--loss.weights.category", "0.5")
    head = build_model(weighted.model, VocabularyOnly(), seed=0).category_head
    assert (head.in_features, head.out_features) == (weighted.model.embed_dim, len(weighted.data.category_names))


def test_a_missing_cluster_file_is_one_line_naming_it(tiny_data_root, tmp_path):
    data_root = tmp_path / "data"
    os.makedirs(data_root / "train_file")
    cfg = tiny_config(str(data_root), tmp_path / "out", "--loss.weights.category", "0.5")
    missing = str(data_root / "train_file" / "cluster.txt")
    assert cfg.data.category_labels and cfg.data.cluster_file == missing and cfg.model.category_classes == 0
    from real20m.datasets import build_train_dataset
    with pytest.raises(AnnotationError, match=f"^{missing}: not found") as error:
        build_train_dataset(cfg.data)
    assert isinstance(error.value, InputError) and "\n" not in str(error.value)
