"""A loss term reading a model output the package does not have, both registered from this file
alone: a tiny run of ``real20m-train``'s ``main`` adds it to the total and shows it in the log line
and TensorBoard."""
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from real20m.cli.train import main as train_main
from real20m.config import parse_config
from real20m.losses import TERMS, register_term
from real20m.models.outputs import EXTRA_OUTPUTS, register_output

OUTPUT, TERM, WEIGHT = "test_title_visual_cosine", "test_alignment", 0.5


@pytest.fixture
def alignment_term():
    """Output: the cosine of each item's title and visual embeddings (B,); term: mean(1 - cosine).
    Yields the outputs the model computed, one tensor per forward pass."""
    computed = []

    @register_output(OUTPUT)
    def title_visual_cosine(model, batch, outputs):
        cosine = (outputs["title"] * outputs["visual"]).sum(dim=-1)
        computed.append(cosine.detach().clone())
        return cosine

    @register_term(TERM, reads=(OUTPUT,))
    def alignment(inputs):
        return (1 - inputs.outputs[OUTPUT]).mean()
    yield computed
    del TERMS[TERM], EXTRA_OUTPUTS[OUTPUT]


def scalars(folder, tag):
    events = EventAccumulator(str(folder))
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


def test_a_term_on_a_new_model_output_enters_the_total_the_log_and_tensorboard(alignment_term, tiny_data_root,
                                                                              tmp_path):
    argv = ["--config", "tiny", "--data_root", tiny_data_root, "--output_dir", str(tmp_path), "--image_size", "32",
            "--batch_size", "4", "--workers", "0", "--vocab_size", "300", "--max_steps", "2", "--print_freq", "1",
            f"--loss.weights.{TERM}", str(WEIGHT)]
    train_main(argv)

    # One forward pass per step (no accumulation): the term's value is that of the output it read.
    expected = [(1 - cosine).mean().item() for cosine in alignment_term]
    assert len(expected) == 2 and min(expected) > 0.1
    logged = scalars(tmp_path / "tensorboard", f"train/{TERM}")
    assert logged == pytest.approx(expected, rel=1e-5)

    weights = parse_config(argv).loss.weights
    assert weights[TERM] == WEIGHT
    weighted = {name: scalars(tmp_path / "tensorboard", f"train/{name}") for name, weight in weights.items() if weight}
    totals = scalars(tmp_path / "tensorboard", "train/total")
    assert len(totals) == 2 and TERM in weighted
    for step, total in enumerate(totals):
        assert total == pytest.approx(sum(weights[name] * values[step] for name, values in weighted.items()), rel=1e-5)

    log = (tmp_path / "log.txt").read_text(encoding="utf-8")
    shown = [float(value) for value in re.findall(rf"\b{TERM} (\d+\.\d{{4}})\b", log)]
    assert shown == pytest.approx(expected, abs=1e-4)

