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

from real20m.config import Config, OptimConfig, write_config
from real20m.datasets import DeviceJpegDecoder, build_train_dataset, decode_batch_pixels
from real20m.engine.accumulation import MicroBatchStep, accumulate_gradients, step_data
from real20m.engine.checkpoint import BEST_NAME, CheckpointManager, load_checkpoint
from real20m.engine.distributed import DistEnv, barrier, broadcast_object, cleanup_distributed, init_distributed
from real20m.engine.optim import build_optimizer, build_scheduler
from real20m.engine.validation import KS as VAL_KS, LOGGED_KS, Validator, selection_score
from real20m.factory import build_collator, build_model, build_objective, build_tokenizer_for, \
    build_train_data, load_weights, restore_tokenizer, tokenizer_files, TOKENIZER_DIR
from real20m.losses import QCDLoss
from real20m.utils.logging import setup_logging
from real20m.utils.meters import AverageMeter
from real20m.utils.seeding import rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__)

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


def resumed_architecture(resume_state: dict | None, cfg: Config):
    """The model to build: a checkpoint of ours resumes with the architecture it stores (so a run
    started from a hub backbone resumes offline), embedding inputs as this run's compat says;
    anything else is built from the configuration."""
    if not resume_state or "model" not in resume_state or not resume_state.get("model_cfg"):
        return cfg.model
    return {**resume_state["model_cfg"], "use_title_mask": cfg.model.use_title_mask,
            "use_query_mask": cfg.model.use_query_mask, "frame_fp16": cfg.model.frame_fp16}


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
        resume_state = load_checkpoint(cfg.run.resume) if cfg.run.resume else None
        if resume_state and resume_state.get("tokenizer_files"):
            # The run continues with the vocabulary it started with, whatever the texts are now.
            self.tokenizer = restore_tokenizer(resume_state["tokenizer_files"], cfg.run.output_dir)
        else:
            self.tokenizer = build_tokenizer_for(cfg.data, cfg.model, cfg.run.output_dir,
                                                 dataset.training_texts, dist.is_main)
        # One loader batch per optimizer step: accum_freq micro-batches of batch_size (accumulation.py).
        self.dataset, self.sampler, self.loader = build_train_data(
            step_data(cfg), build_collator(cfg.data, self.tokenizer), dist, cfg.seed, dataset)
        self.decoder = DeviceJpegDecoder(cfg.data.image_size, train=True, device=dist.device) \
            if cfg.data.gpu_decode else None

        self.model = build_model(resumed_architecture(resume_state, cfg), self.tokenizer, cfg.seed,
                                 cfg.optim.train_vision).to(dist.device)
        self.criterion = build_objective(cfg.loss, self.model.embed_dim).to(dist.device)
        self.step_module = TrainStep(self.model, self.criterion) if cfg.optim.accum_freq == 1 else \
            MicroBatchStep(self.model, self.criterion)
        if dist.world_size > 1:
            device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
            self.step_module = DistributedDataParallel(self.step_module, device_ids=device_ids,
                                                       **no_buffer_resync())

        self.optimizer = build_optimizer(self.model, cfg.optim, extra_params=list(self.criterion.parameters()))
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, len(self.sampler))
        self.scaler = build_grad_scaler(cfg.optim, step_data(cfg).batch_size, dist.device)
        if cfg.optim.accum_freq > 1:
            logger.info("gradient accumulation: each optimizer step scores %d micro-batches of %d together",
                        cfg.optim.accum_freq, cfg.data.batch_size)

        self.epoch = cfg.run.start_epoch
        self.batch_in_epoch = 0
        self.global_step = cfg.run.start_step
        self.best_val_score: float | None = None
        self.last_save = time.monotonic()
        self.validator = Validator(cfg.data.val_dir, cfg.data, build_collator(cfg.data, self.tokenizer), dist,
                                   os.path.join(cfg.run.output_dir, "val"), cfg.data.batch_size,
                                   cfg.data.workers) if cfg.run.val_freq else None
        self.checkpoints = CheckpointManager(cfg.run.checkpoints, cfg.run.keep_checkpoints) if dist.is_main else None
        self.writer = SummaryWriter(os.path.join(cfg.run.output_dir, "tensorboard")) if dist.is_main else None
        self.issues = DataIssueLog()
        self._tokenizer_files = tokenizer_files(os.path.join(cfg.run.output_dir, TOKENIZER_DIR)) \
            if dist.is_main else {}

        if cfg.run.resume:
            self.resume(resume_state, cfg.run.resume)
        elif cfg.run.init_weights:
            logger.info("%s; initialised from %s", load_weights(self.model, cfg.run.init_weights),
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
            "rng": rng_states,
            "model_cfg": self.model.resolved_config(),
            "tokenizer_files": self._tokenizer_files,
            "config": self.cfg.to_dict(),
            "best_val_score": self.best_val_score,
        }

    def save(self) -> None:
        rng_states = self.gather_rng_states()
        if self.dist.is_main:
            path = self.checkpoints.save(self.state_dict(rng_states), self.epoch, self.global_step)
            logger.info("saved %s", path)
        self.last_save = time.monotonic()
        barrier()

    def save_best(self, results: dict) -> None:
        """best.pth.tar: the full training state of the best validation so far, and its metrics."""
        rng_states = self.gather_rng_states()
        if self.dist.is_main:
            path = self.checkpoints.save_named(BEST_NAME, {**self.state_dict(rng_states), "val_metrics": results})
            logger.info("saved %s (validation score %.4f)", path, self.best_val_score)
        barrier()

    def end_of_epoch_save_due(self) -> bool:
        """--save_epoch_freq / --save_interval_s; rank 0's clock decides for every rank."""
        run = self.cfg.run
        due = (run.save_epoch_freq > 0 and self.epoch % run.save_epoch_freq == 0) or \
            (run.save_interval_s > 0 and time.monotonic() - self.last_save >= run.save_interval_s)
        return bool(broadcast_object(due))

    def resume(self, state: dict, path: str) -> None:
        if "optimizer" not in state or "model" not in state:
            # A release checkpoint or exported weights: start training from those weights.
            load_weights(self.model, state)
            logger.info("loaded weights from %s (no training state in it: starting at step 0)", path)
            return
        self.model.load_state_dict(state["model"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.global_step = state["global_step"]
        self.best_val_score = state.get("best_val_score")
        if state.get("world_size", 1) == self.dist.world_size:
            set_rng_state(state["rng"][self.dist.rank])
        else:
            logger.warning("resuming with %d processes instead of %d: the data order and RNG streams change",
                           self.dist.world_size, state.get("world_size"))
        logger.info("resumed from %s at epoch %d, batch %d, step %d", path, self.epoch,
                    self.batch_in_epoch, self.global_step)

    # ---- training ----------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict[str, float]:
        batch = move_to_device(batch, self.dist.device)
        if self.decoder is not None:
            batch = decode_batch_pixels(batch, self.decoder)
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.optim.accum_freq > 1:
            terms = accumulate_gradients(self.step_module, batch, self.cfg.data.batch_size,
                                         lambda: autocast_context(self.cfg.optim, self.dist.device),
                                         lambda loss: self.scaler.scale(loss).backward(), self.dist.device)
        else:
            with autocast_context(self.cfg.optim, self.dist.device):
                loss, terms = self.step_module(batch)
            self.scaler.scale(loss).backward()
        if self.cfg.optim.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            terms.update(clip_gradients(self.model, self.cfg.optim))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
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
        logger.info("epoch %d step %d  %s", self.epoch, self.global_step,
                    "  ".join(f"{name} {meter.avg:.4f}" for name, meter in meters.items()))
        meters.clear()

    def run_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start_batch(self.batch_in_epoch)
        self.step_module.train()
        meters: dict[str, AverageMeter] = {}
        progress = tqdm(self.loader, total=len(self.sampler), initial=self.batch_in_epoch,
                        desc=f"epoch {self.epoch}", disable=None if self.dist.is_main else True, dynamic_ncols=True,
                        leave=False)
        for batch in progress:
            self.issues.add(batch["issues"])
            terms = self.train_step(batch)
            self.global_step += 1
            self.batch_in_epoch += 1
            progress.set_postfix(loss=f"{terms['total']:.3f}", top1=f"{terms['top1']:.2f}")
            self.log_step(terms, meters)
            if self.cfg.run.save_freq and self.global_step % self.cfg.run.save_freq == 0:
                self.save()
            if self.reached_max_steps():
                self.issues.report(self.epoch)  # a run cut short still tells what data it skipped
                return
        self.issues.report(self.epoch)
        self.epoch += 1
        self.batch_in_epoch = 0

    def finished(self) -> bool:
        return self.epoch >= self.cfg.optim.epochs or self.reached_max_steps()

    def validate(self) -> None:
        """Recall@K on the validation split: logged, in TensorBoard and val/history.jsonl; a better
        score than any before writes best.pth.tar."""
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
        for task, metrics in results.items():
            for k in VAL_KS:
                if f"recall@{k}" in metrics:
                    self.writer.add_scalar(f"val/{task}/recall@{k}", metrics[f"recall@{k}"], self.global_step)
        self.writer.add_scalar("val/score", score, self.global_step)
        summary = "; ".join(f"{task} " + " ".join(f"R@{k} {m[f'recall@{k}']:.4f} (chance {m[f'chance_recall@{k}']:.4f})"
                                                   for k in LOGGED_KS if f"recall@{k}" in m)
                            for task, m in results.items())
        logger.info("validation at epoch %d step %d: %s; score %.4f", self.epoch, self.global_step, summary, score)
        record = {"epoch": self.epoch, "step": self.global_step, "score": score,
                  **{task: {key: value for key, value in m.items() if "@" in key} for task, m in results.items()}}
        with open(os.path.join(self.validator.out_dir, "history.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def reached_max_steps(self) -> bool:
        return bool(self.cfg.optim.max_steps) and self.global_step >= self.cfg.optim.max_steps

    def fit(self) -> None:
        logger.info("training on %s: %d batches of %d per process per epoch, %d process(es), device %s",
                    self.cfg.data.train_file, len(self.sampler), self.cfg.data.batch_size, self.dist.world_size,
                    self.dist.device)
        start = time.time()
        while not self.finished():
            self.run_epoch()
            if self.validator is not None and (self.finished() or self.epoch % self.cfg.run.val_freq == 0):
                self.validate()
            if self.finished() or self.end_of_epoch_save_due():
                self.save()
        if self.writer is not None:
            self.writer.close()
        logger.info("training finished after %d steps in %.1f s", self.global_step, time.time() - start)


def train(cfg: Config) -> None:
    dist = init_distributed(cfg.run.dist_timeout)
    setup_logging(cfg.run.output_dir, dist.rank)
    if dist.is_main:
        write_config(cfg, cfg.run.output_dir)
    try:
        Trainer(cfg, dist).fit()
    finally:
        cleanup_distributed()
