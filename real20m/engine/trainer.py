"""The training loop: one process per GPU under torchrun, or a single CPU process.

Order of events: distributed set-up -> data -> tokenizer -> model + objective -> optimizer and
schedule -> (resume) -> epochs of source-homogeneous batches -> atomic checkpoints.
Everything random is seeded from ``--seed`` and every RNG state goes into the checkpoint, so a
resumed run continues the same stream.
"""
from __future__ import annotations

import collections
import contextlib
import inspect
import json
import logging
import os
import time

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from real20m.config import Config, OptimConfig, log_configuration_notes, write_config
from real20m.datasets import DeviceJpegDecoder, build_train_dataset, decode_batch_pixels
from real20m.engine.accumulation import MicroBatchStep, accumulate_gradients
from real20m.engine.checkpoint import BEST_NAME, CheckpointManager
from real20m.engine.distributed import cleanup_distributed, init_distributed, restart_count
from real20m.engine.faults import planned_fault
from real20m.engine.optim import build_optimizer, build_scheduler
from real20m.engine.validation import KS as VAL_KS, Validator, logged_metrics, selection_score, summary
from real20m.engine.watchdog import Heartbeat, Watchdog
from real20m.evaluate.metric_registry import metric_key
from real20m.factory import build_collator, build_model, build_objective, build_tokenizer_for, \
    build_train_data, restore_tokenizer, tokenizer_files, TOKENIZER_DIR
from real20m.losses import QCDLoss
from real20m.losses.terms import TermSetting
from real20m.model_source import inspect_source, load_weights
from real20m.utils.checkpoint_io import CheckpointError
from real20m.utils.distributed import DistEnv, barrier, broadcast_object
from real20m.utils.logging import setup_logging
from real20m.utils.meters import AverageMeter
from real20m.utils.seeding import rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__)

# What resuming a run reads from its checkpoint (the rest is optional).
RESUME_KEYS = ("model", "criterion", "optimizer", "scheduler", "scaler", "epoch", "batch_in_epoch", "global_step",
               "rng")

# Issue kinds reported at the end of each epoch, with the first few paths of each.
MAX_LOGGED_PATHS = 5


class TrainStep(nn.Module):
    """Model + objective as one module, so DDP sees (and averages) every trained parameter,
    the caption decoder and a learnable logit scale included."""

    def __init__(self, model: nn.Module, criterion: QCDLoss):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, batch: dict):
        return self.criterion(self.model(batch))


class DataIssueLog:
    """Counts the data problems the loader met (corrupt frames, missing texts...) over an epoch."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, issues) -> None:
        for kind, path in issues:
            self.counts[kind] += 1
            if len(self.examples[kind]) < MAX_LOGGED_PATHS:
                self.examples[kind].append(path)

    def report(self, epoch: int) -> None:
        if not self.counts:
            return
        for kind, count in sorted(self.counts.items()):
            logger.warning("epoch %d: %d x %s, e.g. %s", epoch, count, kind, ", ".join(self.examples[kind]))
        self.counts.clear()
        self.examples.clear()


def move_to_device(batch: dict, device: torch.device) -> dict:
    """Tensors to ``device``, nested batches (item pairs) included."""
    def moved(value):
        if torch.is_tensor(value):
            return value.to(device, non_blocking=True)
        return move_to_device(value, device) if isinstance(value, dict) else value
    return {key: moved(value) for key, value in batch.items()}


def autocast_context(optim: OptimConfig, device: torch.device):
    """Mixed precision only on CUDA: fp16 (with a GradScaler) or bf16. CPU runs stay fp32."""
    if optim.mixed_precision_training and device.type == "cuda":
        dtype = torch.float16 if optim.amp_dtype == "fp16" else torch.bfloat16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


class CappedGradScaler(torch.amp.GradScaler):
    """A GradScaler whose scale never grows past ``max_scale`` (the original's fp16 scaler)."""

    def __init__(self, *args, max_scale: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_scale = max_scale

    def update(self, new_scale=None) -> None:
        super().update(new_scale)
        if new_scale is None and self.is_enabled() and self.get_scale() > self.max_scale:
            super().update(self.max_scale)


def build_grad_scaler(optim: OptimConfig, batch_size: int, device: torch.device) -> torch.amp.GradScaler:
    """fp16 AMP on CUDA needs a loss scaler; "original": initial scale = batch size, at most 128 x
    batch size, grown every 100 steps without overflow. Disabled (a no-op) otherwise."""
    enabled = optim.mixed_precision_training and device.type == "cuda" and optim.amp_dtype == "fp16"
    if optim.grad_scaler == "original":
        return CappedGradScaler("cuda", init_scale=float(batch_size), growth_interval=100, enabled=enabled,
                                max_scale=128.0 * batch_size)
    return torch.amp.GradScaler("cuda", enabled=enabled)


def clip_gradients(model: nn.Module, optim: OptimConfig) -> dict[str, float]:
    """Clip at ``optim.clip_grad``: one norm over all parameters, or ("per_tower", the original)
    the text and the vision tower each on its own, the fusion layers and the decoder unclipped.
    Returns the norms before clipping, for the log."""
    if optim.clip_grad_mode == "global":
        return {"grad_norm": float(torch.nn.utils.clip_grad_norm_(model.parameters(), optim.clip_grad))}
    norms = {}
    for name, tower in (("grad_norm_text", model.text), ("grad_norm_vision", model.vision)):
        trainable = [param for param in tower.parameters() if param.requires_grad]
        if trainable:
            norms[name] = float(torch.nn.utils.clip_grad_norm_(trainable, optim.clip_grad))
    return norms


# One training step is compute_gradients then apply_gradients. They are separate so that a check
# can read the gradients between the two (benchmarks/train_step_fidelity.py).

def compute_gradients(step_module: nn.Module, batch: dict, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, optim: OptimConfig, micro_batch_size: int,
                      device: torch.device) -> dict[str, float]:
    """The parameters' fresh ``.grad``: the objective on ``batch`` (collated, on ``device``)
    backpropagated through the (scaled) loss, in micro-batches of ``micro_batch_size`` when
    ``optim.accum_freq`` > 1. ``step_module``: TrainStep or MicroBatchStep, possibly in DDP.
    Returns the objective's logged terms."""
    optimizer.zero_grad(set_to_none=True)
    if optim.accum_freq > 1:
        return accumulate_gradients(step_module, batch, micro_batch_size, lambda: autocast_context(optim, device),
                                    lambda loss: scaler.scale(loss).backward(), device)
    with autocast_context(optim, device):
        loss, terms = step_module(batch)
    scaler.scale(loss).backward()
    return terms


def apply_gradients(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
                    optim: OptimConfig) -> dict[str, float]:
    """Unscale and clip the gradients (``optim.clip_grad``, ``optim.clip_grad_mode``), step the
    optimizer, the LR schedule and the model's momentum encoder. Returns the gradient norms before clipping."""
    norms = {}
    if optim.clip_grad > 0:
        scaler.unscale_(optimizer)
        norms = clip_gradients(model, optim)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    model.update_momentum()   # once per optimizer step, whatever the accumulation (models/momentum.py)
    return norms


def place_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Move a LambdaLR schedule to ``step`` (as if stepped that often) and set the LRs it gives."""
    scheduler.last_epoch = step
    for group, base_lr, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(step)


def no_buffer_resync() -> dict:
    """DDP option that stops rank 0 resending buffers every step: the only buffers are the XBM
    memory, filled with gathered embeddings and so already identical on every rank, and the
    model's constant pixel statistics. The option was renamed in recent PyTorch releases."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class Trainer:
    def __init__(self, cfg: Config, dist: DistEnv):
        self.cfg = cfg
        self.dist = dist
        seed_everything(cfg.seed)
        dataset = build_train_dataset(cfg.data)
        start = inspect_source(cfg.run.resume or cfg.run.init_weights)
        start_state = start.state()
        if start.tokenizer_files():
            # The run continues with the vocabulary it started with, whatever the texts are now.
            self.tokenizer = restore_tokenizer(start.tokenizer_files(), cfg.run.output_dir)
        else:
            self.tokenizer = build_tokenizer_for(cfg.data, cfg.model, cfg.run.output_dir,
                                                 dataset.training_texts, dist.is_main, start.vocabulary())
        # One loader batch per optimizer step: accum_freq micro-batches of batch_size (accumulation.py).
        self.dataset, self.sampler, self.loader = build_train_data(
            cfg.data, build_collator(cfg.data, self.tokenizer), dist, cfg.seed, dataset)
        self.decoder = DeviceJpegDecoder(cfg.data.image_size, train=True, device=dist.device) \
            if cfg.data.gpu_decode else None

        self.model = build_model(start.training_architecture(cfg, resuming=bool(cfg.run.resume)), self.tokenizer, cfg.seed,
                                 cfg.optim.train_vision).to(dist.device)
        term_setting = TermSetting(self.model.embed_dim, categories=len(cfg.data.category_names))
        self.criterion = build_objective(cfg.loss, term_setting).to(dist.device)
        self.step_module = TrainStep(self.model, self.criterion) if cfg.optim.accum_freq == 1 else \
            MicroBatchStep(self.model, self.criterion)
        if dist.world_size > 1:
            device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
            self.step_module = DistributedDataParallel(self.step_module, device_ids=device_ids,
                                                       **no_buffer_resync())

        self.optimizer = build_optimizer(self.model, cfg.optim, extra_params=list(self.criterion.parameters()))
        self.steps_per_epoch = len(self.sampler)  # a whole epoch on this run's ranks
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch)
        self.scaler = build_grad_scaler(cfg.optim, cfg.data.step_batch_size, dist.device)
        if cfg.optim.accum_freq > 1:
            logger.info("gradient accumulation: each optimizer step scores %d micro-batches of %d together",
                        cfg.optim.accum_freq, cfg.data.batch_size)

        self.epoch = cfg.run.start_epoch
        self.batch_in_epoch = 0
        # (world size, steps) of earlier parts of this epoch run on other numbers of ranks (samplers.py)
        self.plan_reshards: tuple[tuple[int, int], ...] = ()
        self.global_step = cfg.run.start_step
        self.total_steps = 0   # planned_steps(), refined as each epoch draws its plan
        self.best_val_score: float | None = None
        self.last_save = time.monotonic()
        self.validator = Validator(cfg.data.val_dir, cfg.data, build_collator(cfg.data, self.tokenizer), dist,
                                   os.path.join(cfg.run.output_dir, "val"), cfg.data.batch_size,
                                   cfg.data.workers) if cfg.run.val_freq else None
        self.checkpoints = CheckpointManager(cfg.run.checkpoints, cfg.run.keep_checkpoints) if dist.is_main else None
        self.writer = SummaryWriter(os.path.join(cfg.run.output_dir, "tensorboard")) if dist.is_main else None
        self.issues = DataIssueLog()
        self.fault = planned_fault()
        self.heartbeat = Heartbeat()
        self.step_module.register_forward_pre_hook(lambda *_: self.heartbeat.enter("forward"))
        self.step_module.register_forward_hook(lambda *_: self.heartbeat.enter("backward"))
        self._tokenizer_files = tokenizer_files(os.path.join(cfg.run.output_dir, TOKENIZER_DIR)) \
            if dist.is_main else {}

        if cfg.run.resume:
            self.resume(start_state, cfg.run.resume)
        elif cfg.run.init_weights:
            logger.info("%s; initialised from %s", load_weights(self.model, start_state, cfg.run.init_weights),
                        cfg.run.init_weights)

    # ---- checkpoints -------------------------------------------------------------------------
    def gather_rng_states(self) -> list[dict]:
        """Every rank's RNG state (a collective: all ranks call it), so each resumes its own stream."""
        if self.dist.world_size == 1:
            return [rng_state()]
        states: list = [None] * self.dist.world_size
        torch.distributed.all_gather_object(states, rng_state())
        return states

    def state_dict(self, rng_states: list[dict]) -> dict:
        return {
            "model": self.model.state_dict(),
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            "world_size": self.dist.world_size,
            "plan_reshards": [list(part) for part in self.plan_reshards],
            "rng": rng_states,
            "model_cfg": self.model.resolved_config(),
            "tokenizer_files": self._tokenizer_files,
            "config": self.cfg.to_dict(),
            "best_val_score": self.best_val_score,
        }

    def save(self) -> None:
        self.heartbeat.enter("collective")
        rng_states = self.gather_rng_states()
        if self.dist.is_main:
            self.heartbeat.enter("save")
            path = self.checkpoints.save(self.state_dict(rng_states), self.epoch, self.global_step)
            logger.info("saved %s", path)
        self.last_save = time.monotonic()
        self.heartbeat.enter("collective")
        barrier()

    def save_best(self, results: dict) -> None:
        """best.pth.tar: the full training state of the best validation so far, and its metrics."""
        rng_states = self.gather_rng_states()
        if self.dist.is_main:
            # Plain dicts, the flat view metrics.json has: a checkpoint loads with weights_only.
            val_metrics = {task: dict(scores) for task, scores in results.items()}
            path = self.checkpoints.save_named(BEST_NAME, {**self.state_dict(rng_states), "val_metrics": val_metrics})
            logger.info("saved %s (validation score %.4f)", path, self.best_val_score)
        barrier()

    def end_of_epoch_save_due(self) -> bool:
        """--save_epoch_freq / --save_interval_s; rank 0's clock decides for every rank."""
        run = self.cfg.run
        due = (run.save_epoch_freq > 0 and self.epoch % run.save_epoch_freq == 0) or \
            (run.save_interval_s > 0 and time.monotonic() - self.last_save >= run.save_interval_s)
        self.heartbeat.enter("collective")
        return bool(broadcast_object(due))

    def resume(self, state: dict, path: str) -> None:
        if "optimizer" not in state or "model" not in state:
            # A release checkpoint or exported weights: start training from those weights.
            load_weights(self.model, state, path)
            logger.info("loaded weights from %s (no training state in it: starting at step 0)", path)
            return
        missing = [key for key in RESUME_KEYS if key not in state]
        if missing:
            raise CheckpointError(f"{path}: a training checkpoint without {', '.join(missing)}: it cannot be "
                                  "resumed (--init_weights starts from its weights instead)")
        self.model.load_state_dict(state["model"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.global_step = state["global_step"]
        self.best_val_score = state.get("best_val_score")
        self.plan_reshards = tuple(tuple(part) for part in state.get("plan_reshards", ()))
        saved_world = state.get("world_size", 1)
        if saved_world == self.dist.world_size:
            set_rng_state(state["rng"][self.dist.rank])
        else:
            self.continue_on_other_world_size(saved_world, state["rng"])
        logger.info("resumed from %s at epoch %d, batch %d, step %d", path, self.epoch,
                    self.batch_in_epoch, self.global_step)

    def continue_on_other_world_size(self, saved_world: int, rng_states: list[dict]) -> None:
        """The rest of the checkpoint's epoch, planned for ``saved_world`` ranks, re-dealt to this
        run's ranks (every remaining sample once); the LR schedule placed at the same point of the
        epoch as this run counts its steps; ranks the old run had keep their RNG streams."""
        if self.batch_in_epoch or self.plan_reshards:
            self.plan_reshards = (*self.plan_reshards, (saved_world, self.batch_in_epoch))
        self.batch_in_epoch = 0
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_reshards(self.plan_reshards)
        remaining = len(self.sampler)
        place_schedule(self.scheduler, self.epoch * self.steps_per_epoch + max(0, self.steps_per_epoch - remaining))
        if self.dist.rank < len(rng_states):
            set_rng_state(rng_states[self.dist.rank])
        batch = self.cfg.data.step_batch_size
        logger.warning("resuming on %d processes instead of %d: the rest of epoch %d is re-dealt as %d steps of "
                       "%d x %d samples (the global batch is now %d); %d sample(s) that do not split evenly over "
                       "the processes skipped; the LR schedule continues at step %d (%d steps per epoch)",
                       self.dist.world_size, saved_world, self.epoch, remaining, self.dist.world_size, batch,
                       self.dist.world_size * batch, self.sampler.skipped_samples, self.scheduler.last_epoch,
                       self.steps_per_epoch)

    # ---- training ----------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict[str, float]:
        batch = move_to_device(batch, self.dist.device)
        if self.decoder is not None:
            batch = decode_batch_pixels(batch, self.decoder)
        terms = compute_gradients(self.step_module, batch, self.optimizer, self.scaler, self.cfg.optim,
                                  self.cfg.data.batch_size, self.dist.device)
        terms.update(apply_gradients(self.model, self.optimizer, self.scheduler, self.scaler, self.cfg.optim))
        return terms

    def log_step(self, terms: dict[str, float], meters: dict[str, AverageMeter]) -> None:
        for name, value in terms.items():
            meters.setdefault(name, AverageMeter()).update(value)
        if self.writer is None or self.global_step % self.cfg.run.print_freq:
            return
        for name, meter in meters.items():
            self.writer.add_scalar(f"train/{name}", meter.avg, self.global_step)
        for group in self.optimizer.param_groups:
            self.writer.add_scalar(f"lr/{group['name']}", group["lr"], self.global_step)
        logger.info("epoch %d/%d step %d/%d  %s", self.epoch, self.cfg.optim.epochs, self.global_step,
                    self.total_steps, "  ".join(f"{name} {meter.avg:.4f}" for name, meter in meters.items()))
        meters.clear()

    def run_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_reshards(self.plan_reshards)
        self.sampler.set_start_batch(self.batch_in_epoch)
        self.total_steps = self.planned_steps()
        self.step_module.train()
        meters: dict[str, AverageMeter] = {}
        progress = tqdm(self.loader, total=len(self.sampler), initial=self.batch_in_epoch,
                        desc=f"epoch {self.epoch}/{self.cfg.optim.epochs}",
                        disable=None if self.dist.is_main else True, dynamic_ncols=True, leave=False)
        self.heartbeat.enter("data")
        for batch in progress:
            self.issues.add(batch["issues"])
            terms = self.train_step(batch)
            self.global_step += 1
            self.batch_in_epoch += 1
            progress.set_postfix(loss=f"{terms['total']:.3f}", top1=f"{terms['top1']:.2f}")
            self.log_step(terms, meters)
            if self.cfg.run.save_freq and self.global_step % self.cfg.run.save_freq == 0:
                self.save()
            self.heartbeat.step_done(self.global_step)
            if self.fault is not None:
                self.fault.after_step(self.dist.rank, self.global_step)
            if self.reached_max_steps():
                self.issues.report(self.epoch)  # a run cut short still tells what data it skipped
                return
        self.issues.report(self.epoch)
        self.epoch += 1
        self.batch_in_epoch = 0
        self.plan_reshards = ()

    def finished(self) -> bool:
        return self.epoch >= self.cfg.optim.epochs or self.reached_max_steps()

    def validate(self) -> None:
        """Recall@K on the validation split: logged, in TensorBoard and val/history.jsonl; a better
        score than any before writes best.pth.tar."""
        self.heartbeat.enter("validate")
        results = self.validator(self.model)
        improved = False
        if self.dist.is_main:
            score = selection_score(results)
            improved = self.best_val_score is None or score > self.best_val_score
            if improved:
                self.best_val_score = score
            self.log_validation(results, score)
        improved = broadcast_object(improved)   # rank 0 scored; every rank must take part in the save
        self.best_val_score = broadcast_object(self.best_val_score)
        if improved:
            self.save_best(results)

    def log_validation(self, results: dict, score: float) -> None:
        for task, scores in results.items():
            for metric in logged_metrics():
                values = scores.at(metric.name)
                for k in (k for k in VAL_KS if k in values):
                    self.writer.add_scalar(f"val/{task}/{metric_key(metric.name, k)}", values[k], self.global_step)
        self.writer.add_scalar("val/score", score, self.global_step)
        logger.info("validation at epoch %d step %d: %s; score %.4f", self.epoch, self.global_step, summary(results),
                    score)
        record = {"epoch": self.epoch, "step": self.global_step, "score": score,
                  **{task: scores.flat_values() for task, scores in results.items()}}
        with open(os.path.join(self.validator.out_dir, "history.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def planned_steps(self) -> int:
        """Optimizer steps of the whole run, or --max_steps when that ends it sooner: the steps done,
        the rest of this epoch, and the first epoch's count for each epoch after it. Drawing items per
        query can change an epoch by a batch or two, so run_epoch refines the figure at each epoch
        and it is exact in the last."""
        later_epochs = max(0, self.cfg.optim.epochs - self.epoch - 1)
        planned = self.global_step + max(0, len(self.sampler) - self.batch_in_epoch) + \
            later_epochs * self.steps_per_epoch
        return min(planned, self.cfg.optim.max_steps) if self.cfg.optim.max_steps else planned

    def reached_max_steps(self) -> bool:
        return bool(self.cfg.optim.max_steps) and self.global_step >= self.cfg.optim.max_steps

    def fit(self) -> None:
        self.total_steps = self.planned_steps()
        logger.info("training on %s: about %d steps (%d epochs of about %d batches of %d per process), "
                    "%d process(es), device %s", self.cfg.data.train_file, self.total_steps, self.cfg.optim.epochs,
                    self.steps_per_epoch, self.cfg.data.batch_size, self.dist.world_size, self.dist.device)
        start = time.time()
        self.heartbeat.step_done(self.global_step)
        with Watchdog(self.heartbeat, self.dist.rank, self.cfg.run.hang_timeout):
            while not self.finished():
                self.run_epoch()
                if self.validator is not None and (self.finished() or self.epoch % self.cfg.run.val_freq == 0):
                    self.validate()
                if self.finished() or self.end_of_epoch_save_due():
                    self.save()
        if self.writer is not None:
            self.writer.close()
        logger.info("training finished after %d steps in %.1f s", self.global_step, time.time() - start)


def log_restart(cfg: Config) -> None:
    """Under torchrun --max-restarts: which restart this is, and where it continues from."""
    if restart_count():
        logger.warning("elastic restart %d of at most %s: %s", restart_count(),
                       os.environ.get("TORCHELASTIC_MAX_RESTARTS", "?"),
                       f"resuming from {cfg.run.resume}" if cfg.run.resume else "no checkpoint yet, starting fresh")


def train(cfg: Config) -> None:
    dist = init_distributed(cfg.run.dist_timeout)
    setup_logging(cfg.run.output_dir, dist.rank)
    log_configuration_notes(cfg)
    log_restart(cfg)
    if dist.is_main:
        write_config(cfg, cfg.run.output_dir)
    try:
        Trainer(cfg, dist).fit()
    finally:
        cleanup_distributed()
