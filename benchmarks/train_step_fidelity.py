"""Does one training step of the paper configuration equal the original release's?

    python benchmarks/train_step_fidelity.py FIXTURE_DIR [--runs goods,videos]

FIXTURE_DIR holds what the original release's training code computed in its first step(s) on
fixed inputs and fixed weights (``fixture.json`` and ``step_<run>.npz``, described in its
README.md): the collated inputs, every loss term, the model outputs, per-module gradient norms
before and after clipping, gradients and the parameters after the step. This script builds the
project's model from the same start weights (the release checkpoint ``fixture.json`` names, and
the caption decoder's start weights by the fixture's formula), runs the project's own training
step (``trainer.compute_gradients`` then ``trainer.apply_gradients``) under ``configs/paper.yaml``
plus the run's flags of the original, on the CPU in float32 with dropout off as in the fixture,
and compares every recorded quantity with the tolerances the fixture recommends.

The fixture's tolerances are for one step from equal start weights; a run's later steps (the
cross-batch-memory run has two) get them times the number of steps taken (``Tolerances.after``).
It prints one line per run and step, then one JSON object: whether the start weights equal the
original's bit for bit, for each quantity the worst difference as a fraction of its tolerance
(``ratio``; at most 1 passes) and where it occurs, and ``ok``. The exit status is 0 only when the
start weights are equal and every quantity is within its tolerance. Runs with dropout are not
compared (``DROPOUT_NOT_COMPARED`` says why).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from real20m.assets import CHINESE_BERT_VOCAB_DIR
from real20m.config import Config, parse_config
from real20m.datasets.tokenization import build_tokenizer
from real20m.engine.optim import build_optimizer, build_scheduler
from real20m.engine.trainer import TrainStep, apply_gradients, build_grad_scaler, compute_gradients
from real20m.factory import build_model, build_objective
from real20m.losses.terms import TermSetting
from real20m.model_source import ReleaseCheckpoint, load_weights
from real20m.models.release_layout import map_release_checkpoint
from real20m.utils.checkpoint_io import load_checkpoint

DEVICE = torch.device("cpu")
# The original's flags that shape one step; the rest name files, workers or logging.
VALUE_FLAGS = ("--embedding_size", "--batch_size", "--lr", "--decay_epochs", "--clip_length", "--image_size")
BARE_FLAGS = ("--finetune", "--is_xbm")
# Where each module of the original lives in the project's model, and in a release checkpoint.
MODULE_PREFIXES = {"text": "text.", "vision": "vision.", "fusion": "pooling.", "video_fusion": "frame.",
                   "generation": "caption."}
RELEASE_SECTIONS = {"vision": "state_dict", "text": "doc_text_model", "fusion": "doc_fusion_model",
                    "video_fusion": "doc_fusion_model"}
GPT2_PREFIX, DECODER_PREFIX = "gpt2_model.", "caption.decoder."
# Our logged term -> the original's loss name (as added to its total; the ITC term is only logged).
LOSS_NAMES = {"fused": "loss_multimodal", "title": "loss_title", "visual": "loss_vision",
              "consistency": "loss_norm", "caption": "loss_text_generate", "itc": "loss_itc_not_added",
              "total": "loss_total"}
# After-step tolerance (the fixture's README): 0.01 x lr where the reference gradient is real,
# 2 x lr where it is rounding noise (Adam moves any non-zero gradient by about lr), plus 4 ulp;
# a gradient is noise up to NOISE_FRACTION of its module's largest.
NOISE_FRACTION, AFTER_ULPS = 1e-5, 4
DROPOUT_NOT_COMPARED = (
    "not compared: the original's dropout masks come from torch's global generator in the state left by "
    "every random draw of its set-up (cn_clip's and transformers 4.27's initialisation of each model before "
    "the checkpoint overwrote it, the data loader's seed), which the fixture does not record; and this "
    "project draws its masks in another order (titles before queries) and, for attention probabilities, "
    "inside transformers 5's attention functions")


# ------------------------------------------------------------------------------ the fixture


@dataclass(frozen=True)
class Fixture:
    folder: str
    meta: dict

    @classmethod
    def read(cls, folder: str) -> "Fixture":
        with open(os.path.join(folder, "fixture.json"), encoding="utf-8") as handle:
            return cls(folder, json.load(handle))

    def path(self, relative: str) -> str:
        return os.path.normpath(os.path.join(self.folder, relative))

    def compared_runs(self) -> list[str]:
        return [name for name, run in self.meta["runs"].items() if not run["dropout"] and run["npz"]]

    def dropout_runs(self) -> list[str]:
        return [name for name, run in self.meta["runs"].items() if run["dropout"]]


def step_flags(flags: list[str]) -> list[str]:
    """The run's flags of the original that shape one step, in our command-line syntax (ours
    accepts the original's names)."""
    kept = []
    for index, flag in enumerate(flags):
        if flag in VALUE_FLAGS:
            kept += [flag, flags[index + 1]]
        elif flag in BARE_FLAGS:
            kept.append(flag)
    return kept


def paper_config(fixture: Fixture, run: dict, extra: tuple[str, ...] = ()) -> Config:
    """configs/paper.yaml with the run's flags (then ``extra`` flags), the fixture checkpoint's
    architecture file."""
    release_config = fixture.path(fixture.meta["weights"]["clip_config"])
    return parse_config(["--config", "paper", *step_flags(run["flags"]), "--release_config", release_config,
                         *extra])


def splitmix64_uniform(key: int, count: int) -> np.ndarray:
    """The fixture's start-weight stream: ``count`` float64 values in [0, 1) from ``key``."""
    index = np.arange(1, count + 1, dtype=np.uint64)
    z = np.uint64(key) + index * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def sha16(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()[:16]


def caption_start_weights(meta: dict) -> dict[str, torch.Tensor]:
    """The caption decoder's start weights (the original never restores it) by the fixture's
    formula, keyed by our parameter names; each checked against its recorded sha256."""
    recipe = meta["weights"]["gpt2_start_weights"]
    weights = {}
    for tensor in recipe["tensors"]:
        shape, count = tuple(tensor["shape"]), int(np.prod(tensor["shape"]))
        uniform = splitmix64_uniform(recipe["gpt2_seed"] * 2 ** 32 + tensor["index"], count)
        values = (tensor["centre"] + tensor["half_width"] * (uniform * 2.0 - 1.0)).astype(np.float32).reshape(shape)
        if sha16(values) != tensor["sha256_16"]:
            raise ValueError(f"{tensor['name']}: the start-weight formula does not give the recorded tensor")
        weights[DECODER_PREFIX + tensor["name"].removeprefix(GPT2_PREFIX)] = torch.from_numpy(values)
    return weights


# ------------------------------------------------------------------------------ layouts


class OriginalLayout:
    """Our parameters seen in the original's layout: for each (module, name) of the original, the
    entries of our tensors that hold its flat (C-order) entries. Found by sending index tensors
    through the project's own release-checkpoint mapping (which transposes projections and splits
    packed attention weights); the caption decoder keeps GPT-2's names and layout."""

    def __init__(self, tensors: list[dict]):
        self.parts: dict[tuple[str, str], list[tuple[str, torch.Tensor]]] = {}
        self.shapes: dict[tuple[str, str], tuple[int, ...]] = {}
        fake = {section: {} for section in set(RELEASE_SECTIONS.values())}
        for tensor in tensors:
            key, shape = (tensor["module"], tensor["name"]), tuple(tensor["shape"])
            self.shapes[key] = shape
            indices = torch.arange(int(np.prod(shape))).reshape(shape)
            if key[0] == "generation":
                self.parts[key] = [(DECODER_PREFIX + key[1].removeprefix(GPT2_PREFIX), indices)]
            else:
                fake[RELEASE_SECTIONS[key[0]]]["module." + key[1]] = indices
        mapped, report = map_release_checkpoint(fake)
        for target, source in report.sources.items():
            section, name = source.split(": module.")
            module = "vision" if section == "state_dict" else "text" if section == "doc_text_model" else \
                "video_fusion" if name.startswith("video_attention_pooling.") else "fusion"
            self.parts.setdefault((module, name), []).append((target, mapped[target]))

    def known(self, module: str, name: str) -> bool:
        """Whether our model holds this tensor (not the text wrapper's unused vision copy)."""
        return (module, name) in self.parts

    def gather(self, module: str, name: str, ours: dict[str, torch.Tensor | None]) -> np.ndarray:
        """Our tensors' values as the original's (module, name), flat; a missing gradient is 0."""
        key = (module, name)
        flat = torch.zeros(int(np.prod(self.shapes[key])), dtype=torch.float32)
        for target, indices in self.parts[key]:
            if ours.get(target) is not None:
                flat[indices.flatten()] = ours[target].detach().float().flatten()
        return flat.numpy()


# ------------------------------------------------------------------------------ the step


def build_start_model(cfg: Config, fixture: Fixture):
    """The project's model for ``cfg`` started from the fixture's weights, with dropout off."""
    checkpoint_path = fixture.path(fixture.meta["weights"]["checkpoint"])
    checkpoint = load_checkpoint(checkpoint_path)
    architecture = dict(ReleaseCheckpoint(checkpoint_path, checkpoint).training_architecture(cfg, resuming=False))
    # The fixture's deterministic runs set every dropout probability to 0.
    architecture["text"] = {**architecture["text"], "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    architecture["caption"] = {**architecture["caption"], "dropout": 0.0}
    tokenizer = build_tokenizer(CHINESE_BERT_VOCAB_DIR, None, None)
    model = build_model(architecture, tokenizer, cfg.seed, cfg.optim.train_vision)
    load_weights(model, checkpoint)
    with torch.no_grad():
        parameters = dict(model.named_parameters())
        for name, value in caption_start_weights(fixture.meta).items():
            parameters[name].copy_(value)
    return model


@dataclass
class StepParts:
    """What the trainer builds around the model for its steps (Trainer.__init__, one process)."""
    model: torch.nn.Module
    criterion: torch.nn.Module
    step_module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    cfg: Config

    @classmethod
    def build(cls, cfg: Config, model, steps_per_epoch: int) -> "StepParts":
        criterion = build_objective(cfg.loss, TermSetting(model.embed_dim))
        optimizer = build_optimizer(model, cfg.optim, extra_params=list(criterion.parameters()))
        return cls(model, criterion, TrainStep(model, criterion).train(), optimizer,
                   build_scheduler(optimizer, cfg.optim, steps_per_epoch),
                   build_grad_scaler(cfg.optim, cfg.data.batch_size, DEVICE), cfg)


@dataclass
class StepRecord:
    terms: dict[str, float]
    outputs: dict[str, np.ndarray]
    before: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor | None]
    after: dict[str, torch.Tensor]
    norms_pre: dict[str, float]
    norms_post: dict[str, float]


class OutputTap:
    """Forward hooks that keep the step's outputs: the model's output dict, each text-tower call
    with its input ids, and the vision tower's per-frame embeddings with their gradient."""

    def __init__(self, model):
        self.model = model
        self.model_out: dict = {}
        self.text_calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.vision: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def attached(self):
        handles = [self.model.register_forward_hook(lambda module, args, out: self.model_out.update(out)),
                   self.model.text.register_forward_hook(self._text),
                   self.model.vision.register_forward_hook(self._vision)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _text(self, module, args, out):
        self.text_calls.append((args[0], out.detach()))

    def _vision(self, module, args, out):
        self.vision["emb"] = out.detach()
        out.register_hook(lambda grad: self.vision.__setitem__("grad", grad.detach()))

    def text_output(self, input_ids: torch.Tensor) -> torch.Tensor:
        return next(out for ids, out in self.text_calls if ids is input_ids)


def fixture_batch(arrays, step: str, batch_size: int) -> dict:
    """The original's collated inputs as the project's batch: pixels (B, T, 3, H, W), already
    normalised (float pixels pass the model's normalisation unchanged)."""
    def tensor(name):
        return torch.from_numpy(arrays[f"{step}/inputs/{name}"])
    images = tensor("images")
    return {"query_ids": tensor("query_input_ids"), "query_mask": tensor("query_attention_mask"),
            "title_ids": tensor("title_input_ids"), "title_mask": tensor("title_attention_mask"),
            "pixels": images.view(batch_size, -1, *images.shape[1:])}


def module_norm(model, module: str) -> float:
    """L2 norm (float64) of every gradient of one module: what the fixture's float64 norms are."""
    squares = [param.grad.double().pow(2).sum() for name, param in model.named_parameters()
               if name.startswith(MODULE_PREFIXES[module]) and param.grad is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def run_step(parts: StepParts, batch: dict) -> StepRecord:
    """One training step of the project, with everything the fixture records kept."""
    model = parts.model
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    tap = OutputTap(model)
    with tap.attached():
        terms = compute_gradients(parts.step_module, batch, parts.optimizer, parts.scaler, parts.cfg.optim,
                                  parts.cfg.data.batch_size, DEVICE)
    grads = {name: None if param.grad is None else param.grad.detach().clone()
             for name, param in model.named_parameters()}
    norms_pre = {module: module_norm(model, module) for module in MODULE_PREFIXES}
    apply_gradients(model, parts.optimizer, parts.scheduler, parts.scaler, parts.cfg.optim)
    norms_post = {module: module_norm(model, module) for module in MODULE_PREFIXES}
    after = {name: param.detach().clone() for name, param in model.named_parameters()}
    return StepRecord(terms, step_outputs(tap, batch, parts.criterion), before, grads, after, norms_pre, norms_post)


def step_outputs(tap: OutputTap, batch: dict, criterion) -> dict[str, np.ndarray]:
    """Our step's outputs under the fixture's names."""
    out = tap.model_out
    logits, targets = out["caption_logits"].detach(), out["caption_targets"]
    token_nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    values = {"query_emb": out["query_raw"], "title_emb": tap.text_output(batch["title_ids"]),
              "vision_emb": tap.vision["emb"], "fusion_emb": out["fused"], "t_emb": out["title"],
              "v_emb": out["visual"], "gen_token_nll": token_nll, "grad_vision_emb": tap.vision["grad"]}
    if criterion.memory is not None:
        values["xbm_query_bank_multimodal"], values["xbm_doc_bank_multimodal"] = criterion.memory.negatives()
    return {name: value.detach().float().numpy() for name, value in values.items()}


def added_terms(terms: dict[str, float], criterion) -> dict[str, float]:
    """Each term as it enters the total (weighted), under the original's names."""
    return {LOSS_NAMES[name]: terms[name] * (criterion.weights[name] if name in criterion.enabled else 1.0)
            for name in LOSS_NAMES}


# ------------------------------------------------------------------------------ comparison


@dataclass
class Worst:
    """The largest difference of one quantity as a fraction of its tolerance."""
    ratio: float = 0.0
    at: str = ""
    difference: float = 0.0
    tolerance: float = 0.0
    compared: int = 0

    def add(self, ratio: float, at: str, difference: float, tolerance: float, count: int = 1) -> None:
        self.compared += count
        if not ratio <= self.ratio:  # NaN counts as the worst
            self.ratio, self.at, self.difference, self.tolerance = ratio, at, difference, tolerance

    def as_dict(self) -> dict:
        return {"ratio": self.ratio, "at": self.at, "difference": self.difference, "tolerance": self.tolerance,
                "compared": self.compared}


# after_step: entries with a real reference gradient; after_step_noise: those whose reference
# gradient is zero or rounding noise (their tolerance is 2 x lr).
QUANTITIES = ("losses", "outputs", "grad_norms", "grads", "after_step", "after_step_noise")


@dataclass(frozen=True)
class Tolerances:
    """The fixture's recommended tolerances for one step from equal start weights (set from a
    float64 recomputation of that step)."""
    loss_rtol: float
    output_atol: float
    grad_fraction: float    # of the module's largest reference gradient
    norm_rtol: float
    after_signal_lr: float = 0.01
    after_noise_lr: float = 2.0

    @classmethod
    def recommended(cls, meta: dict) -> "Tolerances":
        values = meta["recommended_tolerances"]
        return cls(values["loss_rtol"], values["output_atol"], values["grad_atol_module_max"], values["norm_rtol"])

    def after(self, steps: int) -> "Tolerances":
        """For the ``steps``-th step of a run (1 = the first). A later step starts from weights that
        differ as much as the earlier steps were allowed to leave them, and Adam's early steps move
        every entry by about lr whatever its gradient's size, so an entry whose gradient is
        rounding noise moves either way: the tolerances add up over the steps taken."""
        return Tolerances(*(steps * value for value in dataclasses.astuple(self)))


class Comparison:
    def __init__(self, fixture: Fixture, layout: OriginalLayout):
        self.one_step = Tolerances.recommended(fixture.meta)
        self.layout = layout
        self.worst = {name: Worst() for name in QUANTITIES}

    def ok(self) -> bool:
        return all(worst.ratio <= 1.0 for worst in self.worst.values())

    def check_step(self, where: str, record: StepRecord, arrays, meta_step: dict, criterion) -> None:
        step = f"s{meta_step['index']}"
        tolerances = self.one_step.after(meta_step["index"] + 1)
        for name, value in added_terms(record.terms, criterion).items():
            self._relative("losses", f"{where}/{name}", value, float(arrays[f"{step}/losses/{name}"]),
                           tolerances.loss_rtol)
        for name, value in record.outputs.items():
            difference = float(np.abs(value - arrays[f"{step}/outputs/{name}"]).max())
            self.worst["outputs"].add(difference / tolerances.output_atol, f"{where}/{name}", difference,
                                      tolerances.output_atol)
        for module, norms in meta_step["module_grad_norms"].items():
            for when, ours in (("pre_clip", record.norms_pre[module]), ("post_clip", record.norms_post[module])):
                self._relative("grad_norms", f"{where}/{module}/{when}", ours, norms[f"{when}_float64"],
                               tolerances.norm_rtol)
        self._tensors(where, record, arrays, step, meta_step, tolerances)

    def _relative(self, quantity: str, at: str, value: float, reference: float, rtol: float) -> None:
        tolerance = rtol * abs(reference)
        difference = abs(value - reference)
        self.worst[quantity].add(difference / tolerance, at, difference, tolerance)

    def _tensors(self, where: str, record: StepRecord, arrays, step: str, meta_step: dict,
                 tolerances: Tolerances) -> None:
        module_max = {}
        for tensor in meta_step["tensors"]:
            if tensor["has_grad"]:
                module_max[tensor["module"]] = max(module_max.get(tensor["module"], 0.0),
                                                   tensor["grad_max_abs_pre_clip"])
        learning_rates = {module: optimizer["groups"][0]["lr"] for optimizer in meta_step["optimizers"].values()
                          for module in optimizer["modules"]}
        for tensor in meta_step["tensors"]:
            module, name = tensor["module"], tensor["name"]
            if self.layout.known(module, name):
                scale = TensorScale(module_max.get(module, 0.0), learning_rates[module])
                self._tensor(f"{where}/{module}/{name}", module, name, record, arrays, step, scale, tolerances)

    def _tensor(self, at: str, module: str, name: str, record: StepRecord, arrays, step: str,
                scale: "TensorScale", tolerances: Tolerances) -> None:
        key = f"{module}/{name}"
        picked = arrays[f"{step}/index/{key}"] if f"{step}/index/{key}" in arrays else slice(None)
        grad_ref = arrays[f"{step}/grad/{key}"].ravel() if f"{step}/grad/{key}" in arrays else None
        if grad_ref is not None:
            grad = self.layout.gather(module, name, record.grads)[picked]
            difference = float(np.abs(grad - grad_ref).max())
            tolerance = tolerances.grad_fraction * scale.module_max
            self.worst["grads"].add(difference / tolerance, at, difference, tolerance, grad.size)
        start = self.layout.gather(module, name, record.before)[picked]
        # A parameter the original left unchanged is not stored: its reference is the start value.
        after_ref = arrays[f"{step}/after/{key}"].ravel() if f"{step}/after/{key}" in arrays else start
        after = self.layout.gather(module, name, record.after)[picked]
        real = np.zeros(after.shape, bool) if grad_ref is None else \
            np.abs(grad_ref) > NOISE_FRACTION * scale.module_max
        allowed = np.where(real, tolerances.after_signal_lr, tolerances.after_noise_lr) * scale.lr + \
            AFTER_ULPS * np.spacing(np.abs(after_ref))
        difference = np.abs(after - after_ref)
        for quantity, entries in (("after_step", real), ("after_step_noise", ~real)):
            if entries.any():
                worst = int(np.argmax(np.where(entries, difference / allowed, -1.0)))
                self.worst[quantity].add(float(difference[worst] / allowed[worst]), at, float(difference[worst]),
                                         float(allowed[worst]), int(entries.sum()))


@dataclass(frozen=True)
class TensorScale:
    """What a tensor's tolerances are relative to: its module's largest reference gradient and
    the learning rate of the module's optimizer."""
    module_max: float
    lr: float


def start_weights_identical(fixture: Fixture, layout: OriginalLayout, model) -> tuple[int, int]:
    """(tensors equal bit for bit to the original's start weights, tensors checked)."""
    parameters = dict(model.named_parameters())
    entries = [entry for entry in fixture.meta["before"] if layout.known(entry["module"], entry["name"])]
    equal = sum(sha16(layout.gather(entry["module"], entry["name"], parameters)) == entry["sha256_16"]
                for entry in entries)
    return equal, len(entries)


# ------------------------------------------------------------------------------ main


def compare_run(fixture: Fixture, name: str, comparison: Comparison) -> bool:
    """Every step of one run compared; returns whether the start weights equal the original's."""
    run = fixture.meta["runs"][name]
    cfg = paper_config(fixture, run)
    model = build_start_model(cfg, fixture)
    equal, checked = start_weights_identical(fixture, comparison.layout, model)
    print(f"{name}: {equal} of {checked} start tensors equal to the original's bit for bit", flush=True)
    parts = StepParts.build(cfg, model, steps_per_epoch=len(run["steps"]))
    with np.load(os.path.join(fixture.folder, run["npz"])) as arrays:
        for meta_step in run["steps"]:
            step = f"s{meta_step['index']}"
            record = run_step(parts, fixture_batch(arrays, step, cfg.data.batch_size))
            comparison.check_step(f"{name}/{step}", record, arrays, meta_step, parts.criterion)
            print(f"{name} {step} ({meta_step['sources'][0]}): loss_total {record.terms['total']:.6f} "
                  f"(original {float(arrays[f'{step}/losses/loss_total']):.6f})", flush=True)
    return equal == checked


@contextlib.contextmanager
def one_thread():
    """The fixture's reductions ran on one thread; the caller's setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixture_dir", help="a folder in the format of the train-step fixture (fixture.json, "
                                            "step_<run>.npz)")
    parser.add_argument("--runs", default=None, help="comma-separated runs to compare (default: every run "
                                                     "without dropout)")
    args = parser.parse_args(argv)
    fixture = Fixture.read(args.fixture_dir)
    runs = args.runs.split(",") if args.runs else fixture.compared_runs()
    comparison = Comparison(fixture, OriginalLayout(fixture.meta["before"]))
    with one_thread():
        same_start = {name: compare_run(fixture, name, comparison) for name in runs}
    result = {"fixture": os.path.abspath(args.fixture_dir), "runs": runs,
              "start_weights_identical": all(same_start.values()),
              **{name: worst.as_dict() for name, worst in comparison.worst.items()},
              "dropout_runs": {name: DROPOUT_NOT_COMPARED for name in fixture.dropout_runs()}}
    result["ok"] = result["start_weights_identical"] and comparison.ok()
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
