"""One short, prepared run that proves the CUDA paths of real20m on a GPU machine.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out gpu_check.json        # a CUDA machine, < 5 min
    python benchmarks/gpu_check.py --dry_run --out dry.json                  # any CPU box (CI), < 1 min

The check is a list of independent parts; each runs in its own try/except with its own time
limit, so one failure never hides the others, and the figures of every part are kept:

  train_fp16         tiny config on freshly generated synthetic data, 50 steps with
                     --mixed_precision_training --amp_dtype fp16 (GradScaler active): loss finite
                     and falling, the scaler's final scale and how many steps it skipped
  train_bf16         the same with --amp_dtype bf16 (no scaler)
  resume             fp16 AMP: 20 steps saving at step 10 (--save_freq 10), then a second run
                     resumed from that checkpoint: max abs weight difference after step 20 and the
                     smallest tolerance of 0, 1e-7, ..., 1e-1 it satisfies (CUDA need not be bitwise)
  nccl               torchrun --standalone with --nccl_procs processes (default 1) through
                     real20m.engine.distributed.init_distributed (NCCL on CUDA): InfoNCE with
                     gathered negatives (an explicit all_gather with autograd, and info_nce) equals
                     the plain loss without a process group, and so do its gradients; all_reduce,
                     broadcast_object and a DDP backward
  paper_arch         the paper-sized model with random weights (ViT-B/16 at 224 px + a
                     RoBERTa-base-sized text tower, vocabulary 21128, caption decoder) at the paper's
                     batch (80 clips x 5 frames): Trainer.train_step under AMP fp16 with and without
                     gradient checkpointing, and bf16: clips/s and peak GPU memory
  extract_autocast   real20m.evaluate.extract's embedding loop in fp32 and under fp16 / bf16
                     autocast on the paper-sized model: items/s and the max difference to fp32
  compat_frame_fp16  the release fixture checkpoint (../shared/fixtures/upstream_ckpt_tiny) with
                     QCDModel.frame_fp16 (fp16 frame transformer, as the original) vs fp32, and
                     both vs the original code's reference outputs
  search             exact top-k on the GPU (GPU Faiss when importable, else torch matmul + topk)
                     vs the CPU search on the same features (ids equal up to ties), and the GPU
                     time of 10k queries x 1M gallery x 512 (float32 and float16)
  jpeg               torchvision.io.decode_jpeg(device="cuda") vs PIL: max pixel difference and
                     images/s; real20m.datasets.transforms.DeviceJpegDecoder vs EvalTransform

``--dry_run`` runs every part's set-up on tiny sizes on the CPU (AMP parts in fp32, as the trainer
does off CUDA; gloo instead of NCCL with 2 processes; tiny search sizes); the parts that need a GPU
(GPU JPEG decoding) report "skipped" with the CPU figures of their set-up. It exits 0 unless a part
failed.

Output: progress on stderr; the last stdout line is one JSON object, also written to ``--out``:

    {
      "schema": "real20m-gpu-check/1",
      "dry_run": bool,
      "device": "cuda:0 (NVIDIA H200)" | "cpu",
      "env": {"python", "torch", "cuda", "cudnn", "nccl", "transformers", "torchvision", "faiss",
              "gpu_name", "gpu_capability", "gpu_memory_gb", "cpu_count"},   (null: not there)
      "total_s": float,
      "summary": {"ok": int, "skipped": int, "failed": int},
      "parts": {
        "<part name>": {
          "status": "ok" | "skipped" | "failed",
          "seconds": float,
          "reason": "<one line>",      only when skipped
          "error": "<one line>",       only when failed (exception type and message)
          "where": "file:line",        only when failed (innermost frame of the traceback)
          "notes": ["..."],            optional remarks (time-boxed loops, fallbacks used)
          ...figures: numbers, bools, strings, nested objects of the same
        }, ...                         every part of the list above, always present
      }
    }

Main figures per part (all parts also carry "device"):

  train_fp16/bf16    amp_active, steps, loss_first, loss_last, loss_first10_mean, loss_last10_mean,
                     loss_finite, loss_falling, scaler_enabled, scaler_scale, scaler_skipped_steps,
                     steps_per_s, peak_mem_gb
  resume             resumed_from_step, final_step, bitwise_equal, max_abs_weight_diff, worst_tensor,
                     tolerance_holds, max_abs_loss_diff, scaler_scale_full, scaler_scale_resumed
  nccl               backend, world_size, loss_plain, loss_gathered, loss_explicit_all_gather,
                     max_abs_loss_diff, max_abs_grad_diff, broadcast_ok, ddp_backward_ok, wall_s
  paper_arch         params_m, clips, frames_per_clip, image_size, modes: {fp16, fp16_checkpointing,
                     bf16: {steps, step_s, clips_per_s, peak_mem_gb, loss, loss_finite, scaler_scale}
                     or {error}}, checkpointing_memory_ratio, checkpointing_speed_ratio
  extract_autocast   fp32/fp16/bf16_items_per_s, fp16/bf16_max_abs_diff, fp16/bf16_min_cosine
  compat_frame_fp16  fp32_vs_reference{,_max}, fp16_vs_fp32{,_max}, fp16_vs_reference_max,
                     compat_eval_autocast_fp16_vs_reference{,_max}
  search             backend, cpu_reference, check: {ids_equal_fraction, ids_equal_up_to_ties,
                     max_exact_score_gap_at_differing_ids, score_max_abs_diff}, timing:
                     {torch_fp32_s, torch_fp16_s, *_queries_per_s, fp16_recall_vs_fp32, peak_mem_gb}
  jpeg               gpu_batch_images_per_s, pil_images_per_s, torchvision_cpu_images_per_s,
                     gpu_vs_pil_max_abs_diff, gpu_vs_pil_mean_abs_diff, device_decoder_cuda: {clips_per_s,
                     max_abs_diff_vs_eval_transform, ...}

Non-finite numbers are written as the strings "nan", "inf", "-inf" (the JSON stays strict).
Exit status: 0 when no part failed, 1 otherwise (the JSON is written either way).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import glob
import io
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SCHEMA = "real20m-gpu-check/1"
PART_NAMES = ("train_fp16", "train_bf16", "resume", "nccl", "paper_arch", "extract_autocast",
              "compat_frame_fp16", "search", "jpeg")
TOLERANCES = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
# The release fixture next to the checkout (../shared), else inside it (shared/, as some copies have it).
FIXTURE_CANDIDATES = [os.path.join(base, "shared", "fixtures", "upstream_ckpt_tiny")
                      for base in (os.path.dirname(ROOT), ROOT)]
DEFAULT_FIXTURE = next((path for path in FIXTURE_CANDIDATES if os.path.isdir(path)), FIXTURE_CANDIDATES[0])

# Paper architecture: Chinese-CLIP ViT-B/16 and a RoBERTa-wwm-ext-base-sized BERT text tower.
PAPER_TEXT = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
              "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12}
PAPER_VISION = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                "patch_size": 16, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
TINY_TEXT = {**PAPER_TEXT, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 128}
TINY_VISION = {**PAPER_VISION, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 64}

# Sizes of a real run (CUDA) and of the dry run (CPU); each part reads its own entry.
GPU_SIZES = {
    "budget_s": 285,
    "synthetic": {},                                  # the generator's defaults: 240 queries, 64 px
    "train": {"steps": 50, "batch_size": 32, "image_size": 64, "workers": 4, "vocab_size": 2000,
              "soft_limit_s": 40, "hard_limit_s": 75},
    "resume": {"steps": 20, "save_at": 10, "hard_limit_s": 90},
    "nccl": {"procs": 1, "timeout_s": 150},
    "paper": {"text": PAPER_TEXT, "vision": PAPER_VISION, "clips": 80, "image_size": 224, "warmup": 2, "steps": 5,
              "mode_soft_s": 15, "hard_limit_s": 120},
    "extract": {"batches": 4, "hard_limit_s": 60},
    "compat": {"hard_limit_s": 40},
    "search": {"check": (1000, 100_000, 512, 100), "timing": (10_000, 1_000_000, 512, 100), "query_chunk": 1024,
               "hard_limit_s": 60},
    "jpeg": {"images": 100, "height": 720, "width": 1280, "clip_length": 5, "image_size": 224, "hard_limit_s": 45},
}
DRY_SIZES = {
    "budget_s": 240,
    "synthetic": {"num_queries": 16, "num_test_queries": 4, "goods_per_query": 2, "videos_per_query": 2,
                  "frames_per_video": 5, "image_size": 32},
    "train": {"steps": 3, "batch_size": 4, "image_size": 32, "workers": 0, "vocab_size": 300,
              "soft_limit_s": 30, "hard_limit_s": 60},
    "resume": {"steps": 4, "save_at": 2, "hard_limit_s": 60},
    "nccl": {"procs": 2, "timeout_s": 120},
    "paper": {"text": TINY_TEXT, "vision": TINY_VISION, "clips": 2, "image_size": 32, "warmup": 0, "steps": 1,
              "mode_soft_s": 10, "hard_limit_s": 60},
    "extract": {"batches": 2, "hard_limit_s": 60},
    "compat": {"hard_limit_s": 40},
    "search": {"check": (40, 3000, 32, 10), "timing": (100, 5000, 32, 10), "query_chunk": 64, "hard_limit_s": 60},
    "jpeg": {"images": 10, "height": 48, "width": 80, "clip_length": 5, "image_size": 32, "hard_limit_s": 45},
}

log = logging.getLogger("gpu_check")


class Skip(Exception):
    """A part that cannot run here; the message is the reason, ``figures`` what it measured anyway."""

    def __init__(self, reason: str, figures: dict | None = None):
        super().__init__(reason)
        self.figures = figures or {}


class CheckFailed(AssertionError):
    """A part that ran but whose figures fail its check; the figures are still reported."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


class PartTimeout(BaseException):
    """A part that ran past its hard limit (a BaseException: no ``except Exception`` inside a part
    swallows it)."""


@dataclasses.dataclass
class Context:
    dry_run: bool
    device: torch.device
    sizes: dict
    workdir: str
    fixture: str | None
    nccl_procs: int
    cache: dict = dataclasses.field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def dist_env(self):
        from real20m.utils.distributed import DistEnv
        return DistEnv(rank=0, world_size=1, local_rank=0, device=self.device, is_main=True, backend=None)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def data_root(self) -> str:
        """The synthetic dataset, generated once for every part that trains."""
        if "data_root" not in self.cache:
            from real20m.datasets.synthetic import generate
            root = os.path.join(self.workdir, "synthetic")
            started = time.perf_counter()
            generate(root, seed=0, **self.sizes["synthetic"])
            self.cache["data_root"] = root
            self.cache["data_s"] = round(time.perf_counter() - started, 2)
        return self.cache["data_root"]


# ------------------------------------------------------------------------------------ helpers


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def finite_or_str(value):
    """JSON-safe copy: non-finite floats as strings, numpy scalars and tuples as plain values."""
    if isinstance(value, dict):
        return {str(key): finite_or_str(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_str(item) for item in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def rounded(value, digits: int = 4):
    return None if value is None else float(f"{float(value):.{digits}g}")


def tolerance_holding(diff: float):
    """The smallest tolerance of TOLERANCES that ``diff`` satisfies (None: none does)."""
    for tolerance in TOLERANCES:
        if diff <= tolerance:
            return tolerance
    return None


def peak_gb(ctx: Context):
    return round(torch.cuda.max_memory_allocated(ctx.device) / 2**30, 3) if ctx.cuda else None


def reset_peak(ctx: Context) -> None:
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)


def free_memory(ctx: Context) -> None:
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


@contextlib.contextmanager
def exact_fp32():
    """True fp32 matmuls and convolutions (no TF32) for reference computations."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@contextlib.contextmanager
def hard_limit(seconds: float):
    """Raise PartTimeout in this (main) thread after ``seconds`` (checked between Python bytecodes)."""
    if not hasattr(signal, "SIGALRM") or seconds <= 0:
        yield
        return

    def expire(signum, frame):
        raise PartTimeout(f"ran past its hard limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def module_version(name: str):
    try:
        module = __import__(name)
    except Exception:  # noqa: BLE001 - absent or broken: reported as null
        return None
    return getattr(module, "__version__", "unknown")


def environment(ctx: Context) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "nccl": None, "transformers": module_version("transformers"), "torchvision": module_version("torchvision"),
           "faiss": module_version("faiss"), "gpu_name": None, "gpu_capability": None, "gpu_memory_gb": None,
           "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu_name=props.name, gpu_capability=f"{props.major}.{props.minor}",
                   gpu_memory_gb=round(props.total_memory / 2**30, 1))
        with contextlib.suppress(Exception):
            version = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    return env


# ------------------------------------------------------------------------------ training parts


def tiny_train_config(ctx: Context, output_dir: str, steps: int, *extra: str):
    from real20m.config import parse_config
    sizes = ctx.sizes["train"]
    root = ctx.data_root()
    return parse_config([
        "--config", "tiny", "--data_root", root, "--train_file", os.path.join(root, "train_file", "train_items.txt"),
        "--output_dir", output_dir, "--batch_size", str(sizes["batch_size"]), "--workers", str(sizes["workers"]),
        "--image_size", str(sizes["image_size"]), "--vocab_size", str(sizes["vocab_size"]),
        "--max_steps", str(steps), "--print_freq", "1000000", "--keep_checkpoints", "0", "--seed", "0",
        "--mixed_precision_training", *extra])


def quiet_progress(module) -> None:
    """No tqdm bars from ``module`` (the trainer's would flood the log); patched in this process only."""
    bar = getattr(module, "tqdm", None)
    if bar is None or getattr(bar, "_gpu_check_quiet", False):
        return

    def quiet(*args, **kwargs):
        kwargs["disable"] = True
        return bar(*args, **kwargs)

    quiet._gpu_check_quiet = True
    module.tqdm = quiet


def recording_trainer(cfg, ctx: Context, soft_limit_s: float | None = None):
    """A Trainer whose train_step records every step's loss and scaler scale, optionally stopped
    (between steps, as max_steps does) once ``soft_limit_s`` have passed."""
    from real20m.engine import trainer as trainer_module
    quiet_progress(trainer_module)
    trainer = trainer_module.Trainer(cfg, ctx.dist_env())
    record = {"loss": [], "scale": [], "time_boxed": False}
    step = trainer.train_step

    def recording_step(batch):
        terms = step(batch)
        record["loss"].append(float(terms["total"]))
        record["scale"].append(float(trainer.scaler.get_scale()) if trainer.scaler.is_enabled() else None)
        return terms

    trainer.train_step = recording_step
    if soft_limit_s is not None:
        deadline = time.monotonic() + soft_limit_s
        reached = trainer.reached_max_steps

        def reached_or_out_of_time() -> bool:
            if reached():
                return True
            if time.monotonic() > deadline:
                record["time_boxed"] = True
                return True
            return False

        trainer.reached_max_steps = reached_or_out_of_time
    return trainer, record


def loss_figures(losses: list[float]) -> dict:
    window = max(1, min(10, len(losses) // 2))
    first, last = float(np.mean(losses[:window])), float(np.mean(losses[-window:]))
    return {"loss_first": rounded(losses[0], 6), "loss_last": rounded(losses[-1], 6),
            f"loss_first{window}_mean": rounded(first, 6), f"loss_last{window}_mean": rounded(last, 6),
            "loss_finite": bool(all(math.isfinite(value) for value in losses)), "loss_falling": bool(last < first)}


def train_amp(ctx: Context, amp_dtype: str) -> dict:
    sizes = ctx.sizes["train"]
    output_dir = os.path.join(ctx.workdir, f"train_{amp_dtype}")
    cfg = tiny_train_config(ctx, output_dir, sizes["steps"], "--amp_dtype", amp_dtype)
    reset_peak(ctx)
    trainer, record = recording_trainer(cfg, ctx, sizes["soft_limit_s"])
    started = time.perf_counter()
    trainer.fit()
    ctx.sync()
    elapsed = time.perf_counter() - started
    losses, scales = record["loss"], record["scale"]
    result = {"device": str(ctx.device), "amp_active": ctx.cuda, "amp_dtype": amp_dtype,
              "steps": len(losses), "steps_asked": sizes["steps"], "batch_size": cfg.data.batch_size,
              "image_size": cfg.data.image_size, "workers": cfg.data.workers,
              "synthetic_data_s": ctx.cache.get("data_s"), "steps_per_s": rounded(len(losses) / elapsed),
              **loss_figures(losses), "scaler_enabled": bool(trainer.scaler.is_enabled()),
              "scaler_scale": rounded(trainer.scaler.get_scale()) if trainer.scaler.is_enabled() else None,
              "scaler_skipped_steps": sum(1 for a, b in zip(scales, scales[1:]) if a is not None and b < a),
              "peak_mem_gb": peak_gb(ctx)}
    if record["time_boxed"]:
        result["notes"] = [f"time-boxed: stopped after {len(losses)} of {sizes['steps']} steps"]
    del trainer
    free_memory(ctx)
    if not result["loss_finite"]:
        raise CheckFailed(f"non-finite loss under {amp_dtype}: {losses}", result)
    if amp_dtype == "fp16" and ctx.cuda and not result["scaler_enabled"]:
        raise CheckFailed("fp16 AMP on CUDA but the GradScaler is disabled", result)
    if not ctx.dry_run and len(losses) >= 20 and not result["loss_falling"]:
        raise CheckFailed(f"loss not falling under {amp_dtype}: first {result['loss_first']}, "
                          f"last {result['loss_last']}", result)
    return result


def part_train_fp16(ctx: Context) -> dict:
    return train_amp(ctx, "fp16")


def part_train_bf16(ctx: Context) -> dict:
    if ctx.cuda and not torch.cuda.is_bf16_supported():
        raise Skip("this GPU has no bf16 support")
    return train_amp(ctx, "bf16")


def part_resume(ctx: Context) -> dict:
    sizes = ctx.sizes["resume"]
    steps, save_at = sizes["steps"], sizes["save_at"]
    full_dir, resumed_dir = os.path.join(ctx.workdir, "resume_full"), os.path.join(ctx.workdir, "resume_resumed")
    full, full_record = recording_trainer(
        tiny_train_config(ctx, full_dir, steps, "--amp_dtype", "fp16", "--save_freq", str(save_at)), ctx)
    full.fit()
    middle = sorted(glob.glob(os.path.join(full_dir, "checkpoints", f"checkpoint_*_{save_at}.pth.tar")))
    if not middle:
        raise AssertionError(f"no checkpoint of step {save_at} in {full_dir}/checkpoints: "
                             f"{sorted(os.listdir(os.path.join(full_dir, 'checkpoints')))}")
    expected = {name: value.detach().float().cpu() for name, value in full.model.state_dict().items()}
    full_scale = float(full.scaler.get_scale())
    del full
    free_memory(ctx)

    resumed, resumed_record = recording_trainer(
        tiny_train_config(ctx, resumed_dir, steps, "--amp_dtype", "fp16", "--resume", middle[-1]), ctx)
    start_step = resumed.global_step
    resumed.fit()
    actual = {name: value.detach().float().cpu() for name, value in resumed.model.state_dict().items()}
    resumed_scale = float(resumed.scaler.get_scale())
    final_step = resumed.global_step
    del resumed
    free_memory(ctx)

    if expected.keys() != actual.keys():
        raise AssertionError(f"state dict keys differ: {sorted(set(expected) ^ set(actual))[:5]}")
    diffs = {name: float((expected[name] - actual[name]).abs().max()) if expected[name].numel() else 0.0
             for name in expected}
    worst = max(diffs, key=diffs.get)
    tail = full_record["loss"][start_step:]
    loss_diff = max((abs(a - b) for a, b in zip(tail, resumed_record["loss"])), default=None)
    result = {"device": str(ctx.device), "amp_active": ctx.cuda, "amp_dtype": "fp16", "steps": steps,
              "resumed_from_step": start_step, "final_step": final_step, "checkpoint": os.path.basename(middle[-1]),
              "bitwise_equal": all(torch.equal(expected[name], actual[name]) for name in expected),
              "max_abs_weight_diff": diffs[worst], "worst_tensor": worst,
              "tolerance_holds": tolerance_holding(diffs[worst]),
              "loss_steps_compared": min(len(tail), len(resumed_record["loss"])),
              "max_abs_loss_diff": loss_diff, "scaler_scale_full": full_scale, "scaler_scale_resumed": resumed_scale}
    if start_step != save_at or final_step != steps:
        raise CheckFailed(f"resumed at step {start_step} (expected {save_at}), ended at {final_step}", result)
    if result["tolerance_holds"] is None or result["tolerance_holds"] > 1e-3:
        raise CheckFailed(f"resumed weights differ by {diffs[worst]:.3g} ({worst})", result)
    return result


# ------------------------------------------------------------------------------------- NCCL


def dist_worker(out_path: str) -> int:
    """Run under torchrun: InfoNCE with and without the process group, plus a few collectives."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn
    from torch.nn.parallel import DistributedDataParallel

    from real20m.engine.distributed import cleanup_distributed, init_distributed
    from real20m.losses.contrastive import info_nce, info_nce_gathered
    from real20m.utils.distributed import broadcast_object

    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local_batch, dim, scale = 16, 512, 20.0
    generator = torch.Generator().manual_seed(1234)
    all_a = F.normalize(torch.randn(local_batch * world, dim, generator=generator, dtype=torch.float64), dim=-1)
    all_b = F.normalize(torch.randn(local_batch * world, dim, generator=generator, dtype=torch.float64), dim=-1)
    rows = slice(rank * local_batch, (rank + 1) * local_batch)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else \
        torch.device("cpu")

    # The plain loss: the whole global batch in one process, before any process group exists.
    plain_a, plain_b = (x.float().to(device).requires_grad_() for x in (all_a, all_b))
    plain = info_nce(plain_a, plain_b, scale)
    plain.backward()

    started = time.perf_counter()
    env = init_distributed(timeout_s=120)
    init_s = time.perf_counter() - started
    try:
        # 1. info_nce itself (gathers across ranks when world > 1).
        a, b = (x[rows].float().to(env.device).requires_grad_() for x in (all_a, all_b))
        gathered = info_nce(a, b, scale)
        gathered.backward()
        # 2. An explicit all_gather with autograd through the backend (also with one process).
        a2, b2 = (x[rows].float().to(env.device).requires_grad_() for x in (all_a, all_b))
        gathered_a, gathered_b = (torch.cat(dist_fn.all_gather(x), dim=0) for x in (a2, b2))
        explicit = info_nce_gathered(a2, b2, gathered_a, gathered_b, scale, None, None)
        explicit.backward()
        # The rank losses average to the plain loss; a rank's gradient / world is the plain one.
        rank_losses = torch.tensor([float(gathered), float(explicit)], dtype=torch.float64,
                                   device=env.device if env.backend == "nccl" else "cpu")
        dist.all_reduce(rank_losses)
        loss_gathered, loss_explicit = (loss / world for loss in rank_losses.tolist())
        grad_diffs = torch.tensor([
            float((a.grad / world - plain_a.grad[rows]).abs().max()),
            float((b.grad / world - plain_b.grad[rows]).abs().max()),
            float((a2.grad / world - plain_a.grad[rows]).abs().max()),
            float((b2.grad / world - plain_b.grad[rows]).abs().max())], dtype=torch.float64,
            device=env.device if env.backend == "nccl" else "cpu")
        dist.all_reduce(grad_diffs, op=dist.ReduceOp.MAX)
        shared = broadcast_object({"from_rank": env.rank})
        layer = torch.nn.Linear(8, 8).to(env.device)
        ddp = DistributedDataParallel(layer, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
        ddp(torch.ones(4, 8, device=env.device)).sum().backward()
        ddp_grad_finite = bool(torch.isfinite(layer.weight.grad).all())
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)
        result = {"backend": env.backend, "world_size": env.world_size, "device": str(env.device),
                  "init_s": round(init_s, 2), "loss_plain": float(plain), "loss_gathered": loss_gathered,
                  "loss_explicit_all_gather": loss_explicit,
                  "max_abs_loss_diff": max(abs(loss_gathered - float(plain)), abs(loss_explicit - float(plain))),
                  "max_abs_grad_diff": float(grad_diffs.max()), "broadcast_ok": shared == {"from_rank": 0},
                  "ddp_backward_ok": ddp_grad_finite}
    finally:
        cleanup_distributed()
    if rank == 0:
        with open(out_path, "w", encoding="utf-8") as handle:
            json.dump(result, handle)
    return 0


def part_nccl(ctx: Context) -> dict:
    sizes = ctx.sizes["nccl"]
    procs = ctx.nccl_procs or sizes["procs"]
    if ctx.cuda and procs > torch.cuda.device_count():
        raise Skip(f"{procs} NCCL processes need {procs} GPUs, this machine has {torch.cuda.device_count()}")
    out_path = os.path.join(ctx.workdir, "nccl_result.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    if not ctx.cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""   # gloo on the CPU, also on a machine that has a GPU
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               os.path.abspath(__file__), "--_dist_worker", out_path]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, timeout=sizes["timeout_s"], env=env,
                               cwd=ctx.workdir)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0 or not os.path.exists(out_path):
        log.warning("torchrun output:\n%s", (completed.stdout + completed.stderr)[-4000:])
        lines = [line for line in (completed.stderr + completed.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error" in line] or lines
        raise RuntimeError(f"torchrun exited {completed.returncode}: {one_line(errors[-1] if errors else '')}")
    with open(out_path, encoding="utf-8") as handle:
        result = json.load(handle)
    result.update(launcher="python -m torch.distributed.run --standalone", nproc_per_node=procs,
                  wall_s=round(elapsed, 2))
    expected_backend = "nccl" if ctx.cuda else "gloo"
    if result["backend"] != expected_backend:
        raise CheckFailed(f"backend {result['backend']}, expected {expected_backend}", result)
    if not result["max_abs_loss_diff"] <= 1e-5 or not result["max_abs_grad_diff"] <= 1e-6:
        raise CheckFailed(f"gathered loss/gradients differ from the plain ones: loss "
                          f"{result['max_abs_loss_diff']:.3g}, grad {result['max_abs_grad_diff']:.3g}", result)
    if not (result["broadcast_ok"] and result["ddp_backward_ok"]):
        raise CheckFailed("broadcast_object or the DDP backward failed", result)
    return result


# ----------------------------------------------------------------------- paper architecture


def yaml_mapping(values: dict) -> str:
    """A mapping as the command line's YAML value. PyYAML reads ``1e-12`` (no dot) as a string, so
    the floats go through yaml.safe_dump, which writes ``1.0e-12``."""
    import yaml
    return yaml.safe_dump(dict(values), default_flow_style=True).strip()


def paper_model(ctx: Context):
    """(cfg, model on the device, tokenizer) of the paper-sized architecture, built once."""
    if "paper" not in ctx.cache:
        from real20m.assets import CHINESE_BERT_VOCAB_DIR
        from real20m.config import parse_config
        from real20m.datasets import build_tokenizer
        from real20m.factory import build_model
        sizes = ctx.sizes["paper"]
        cfg = parse_config(["--config", "paper", "--model.pretrained", "null",
                            "--model.text", yaml_mapping(sizes["text"]),
                            "--model.vision", yaml_mapping(sizes["vision"]), "--batch_size", str(sizes["clips"]),
                            "--image_size", str(sizes["image_size"]),
                            "--output_dir", os.path.join(ctx.workdir, "paper"), "--mixed_precision_training",
                            "--amp_dtype", "fp16"])
        tokenizer = build_tokenizer(CHINESE_BERT_VOCAB_DIR, None, None)
        started = time.perf_counter()
        model = build_model(cfg.model, tokenizer, cfg.seed).to(ctx.device)
        ctx.cache["paper_build_s"] = round(time.perf_counter() - started, 2)
        ctx.cache["paper"] = (cfg, model, tokenizer)
    return ctx.cache["paper"]


def random_batch(cfg, tokenizer, device, clips: int, frames: int, seed: int = 0) -> dict:
    """A training/evaluation batch of random tokens and pixels, already on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    size, vocab = cfg.data.image_size, len(tokenizer)

    def tokens(length):
        ids = torch.randint(1000, vocab, (clips, length), generator=generator)
        ids[:, 0] = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else 1
        return ids.to(device), torch.ones(clips, length, dtype=torch.long, device=device)

    title_ids, title_mask = tokens(cfg.data.max_title_len)
    query_ids, query_mask = tokens(cfg.data.max_query_len)
    pixels = torch.randint(0, 256, (clips, frames, 3, size, size), generator=generator, dtype=torch.uint8)
    return {"pids": torch.arange(clips), "source": "photo" if frames > 1 else "goods", "issues": [],
            "pixels": pixels.to(device), "title_ids": title_ids, "title_mask": title_mask,
            "query_ids": query_ids, "query_mask": query_mask}


def train_step_owner(cfg, ctx: Context, model):
    """What Trainer.train_step reads from its Trainer, for random in-memory batches."""
    from real20m.engine.optim import build_optimizer, build_scheduler
    from real20m.engine.trainer import TrainStep, build_grad_scaler
    from real20m.factory import build_objective
    from real20m.losses.terms import TermSetting
    criterion = build_objective(cfg.loss, TermSetting(model.embed_dim)).to(ctx.device)
    optimizer = build_optimizer(model, cfg.optim, extra_params=list(criterion.parameters()))
    scaler = build_grad_scaler(cfg.optim, cfg.data.batch_size, ctx.device)  # the scaler the Trainer builds
    return types.SimpleNamespace(cfg=cfg, dist=ctx.dist_env(), model=model, step_module=TrainStep(model, criterion),
                                 decoder=None, optimizer=optimizer,
                                 scheduler=build_scheduler(optimizer, cfg.optim, 1000), scaler=scaler)


def part_paper_arch(ctx: Context) -> dict:
    from real20m.engine.trainer import Trainer
    sizes = ctx.sizes["paper"]
    cfg, model, tokenizer = paper_model(ctx)
    batch = random_batch(cfg, tokenizer, ctx.device, cfg.data.batch_size, cfg.data.clip_length)
    modes = [("fp16", False), ("fp16", True)]
    if not ctx.cuda or torch.cuda.is_bf16_supported():
        modes.append(("bf16", False))
    result = {"device": str(ctx.device), "amp_active": ctx.cuda,
              "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
              "compat": cfg.data.compat, "frame_fp16": bool(getattr(model, "frame_fp16", False)),
              "grad_scaler": getattr(cfg.optim, "grad_scaler", "default"),
              "build_s": ctx.cache.get("paper_build_s"), "clips": cfg.data.batch_size,
              "frames_per_clip": cfg.data.clip_length, "image_size": cfg.data.image_size,
              "title_tokens": cfg.data.max_title_len, "query_tokens": cfg.data.max_query_len,
              "vocab_size": len(tokenizer), "text": dict(sizes["text"]), "vision": dict(sizes["vision"]),
              "step": "Trainer.train_step (forward + backward + clip + optimizer step)", "modes": {}}
    notes, failures = [], []
    model.train()
    for amp_dtype, checkpointing in modes:
        name = amp_dtype + ("_checkpointing" if checkpointing else "")
        mode_cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, amp_dtype=amp_dtype))
        owner = None
        try:
            model.set_gradient_checkpointing(checkpointing)
            owner = train_step_owner(mode_cfg, ctx, model)
            for _ in range(sizes["warmup"]):
                Trainer.train_step(owner, batch)
            ctx.sync()
            reset_peak(ctx)
            losses, started = [], time.perf_counter()
            deadline = started + sizes["mode_soft_s"]
            while len(losses) < sizes["steps"] and (not losses or time.perf_counter() < deadline):
                losses.append(float(Trainer.train_step(owner, batch)["total"]))
            ctx.sync()
            elapsed = time.perf_counter() - started
            result["modes"][name] = {
                "amp_dtype": amp_dtype, "gradient_checkpointing": checkpointing, "steps": len(losses),
                "step_s": rounded(elapsed / len(losses)), "clips_per_s": rounded(len(losses) * batch["pixels"].shape[0]
                                                                               / elapsed),
                "peak_mem_gb": peak_gb(ctx), "loss": rounded(losses[-1], 6),
                "allocated_after_gb": round(torch.cuda.memory_allocated(ctx.device) / 2**30, 3) if ctx.cuda else None,
                "loss_finite": all(math.isfinite(value) for value in losses),
                "scaler_scale": rounded(owner.scaler.get_scale()) if owner.scaler.is_enabled() else None}
            if len(losses) < sizes["steps"]:
                notes.append(f"{name}: time-boxed to {len(losses)} of {sizes['steps']} steps")
            if not result["modes"][name]["loss_finite"]:
                failures.append(f"{name}: non-finite loss")
        except Exception as error:  # noqa: BLE001 - one mode failing (e.g. out of memory) keeps the others
            result["modes"][name] = {"error": one_line(f"{type(error).__name__}: {error}")}
            failures.append(f"{name}: {type(error).__name__}")
        finally:
            if owner is not None:
                owner.optimizer.zero_grad(set_to_none=True)
            del owner
            model.zero_grad(set_to_none=True)
            free_memory(ctx)
    model.set_gradient_checkpointing(False)
    plain, checkpointed = result["modes"].get("fp16", {}), result["modes"].get("fp16_checkpointing", {})
    if plain.get("peak_mem_gb") and checkpointed.get("peak_mem_gb"):
        result["checkpointing_memory_ratio"] = round(checkpointed["peak_mem_gb"] / plain["peak_mem_gb"], 3)
        result["checkpointing_speed_ratio"] = round(checkpointed["clips_per_s"] / plain["clips_per_s"], 3)
    if notes:
        result["notes"] = notes
    if failures:
        raise CheckFailed("; ".join(failures), result)
    return result


# -------------------------------------------------------------------------- feature extraction


def part_extract_autocast(ctx: Context) -> dict:
    from real20m.evaluate.encoder import Encoder
    cfg, model, tokenizer = paper_model(ctx)
    model.eval()
    clips, frames = cfg.data.batch_size, cfg.data.clip_length
    videos = [random_batch(cfg, tokenizer, ctx.device, clips, frames, seed=10 + i)
              for i in range(ctx.sizes["extract"]["batches"])]
    goods = [random_batch(cfg, tokenizer, ctx.device, clips, 1, seed=100)]
    dtypes = {"fp32": None, "fp16": torch.float16}
    if not ctx.cuda or torch.cuda.is_bf16_supported():
        dtypes["bf16"] = torch.bfloat16
    result = {"device": str(ctx.device), "autocast_active": ctx.cuda, "path": "real20m.evaluate.encoder.Encoder.item_batches",
              "clips_per_batch": clips, "frames_per_clip": frames, "batches": len(videos),
              "inputs": "random tokens and uint8 pixels, already on the device", "fp32_reference": "TF32 off"}
    # The fp16 frame transformer (compat) would put fp16 into the fp32 reference; compat_frame_fp16
    # measures it on its own.
    frame_fp16, model.frame_fp16 = getattr(model, "frame_fp16", False), False
    result["model_frame_fp16"] = bool(frame_fp16)
    features = {}
    for name, dtype in dtypes.items():
        with exact_fp32() if dtype is None else contextlib.nullcontext():
            encoder = Encoder(model, ctx.device, dtype)
            list(encoder.item_batches(videos[:1]))   # warm-up (kernel selection)
            ctx.sync()
            started = time.perf_counter()
            video_feats = [feats for _, feats, _ in encoder.item_batches(videos)]
            ctx.sync()
            elapsed = time.perf_counter() - started
            goods_feats = [feats for _, feats, _ in encoder.item_batches(goods)]
        features[name] = np.concatenate(video_feats + goods_feats)
        result[f"{name}_items_per_s"] = rounded(clips * len(videos) / elapsed)
    reference = features["fp32"]
    for name in dtypes:
        if name == "fp32":
            continue
        cosine = np.sum(features[name].astype(np.float64) * reference, axis=1)
        result[f"{name}_max_abs_diff"] = float(np.abs(features[name] - reference).max())
        result[f"{name}_min_cosine"] = float(cosine.min())
    if not ctx.cuda:
        # extract.py autocasts on CUDA only, so the CPU figures above are fp32 throughout; CPU bf16
        # autocast on the same model at least exercises the comparison.
        batch = videos[0]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            fused = model.encode_items(batch["title_ids"], batch["title_mask"], batch["pixels"]).fused
        cpu_bf16 = F.normalize(fused.float(), dim=-1).numpy()
        result["cpu_bf16_autocast_max_abs_diff"] = float(np.abs(cpu_bf16 - reference[:clips]).max())
        result["notes"] = ["CPU: extract.py applies autocast on CUDA only; fp16/bf16 figures equal fp32 here"]
    model.frame_fp16 = frame_fp16
    free_memory(ctx)
    for name in dtypes:
        if name != "fp32" and not result[f"{name}_min_cosine"] > 0.99:
            raise CheckFailed(f"{name} features far from fp32: min cosine {result[f'{name}_min_cosine']:.4f}", result)
    return result


# ---------------------------------------------------------------------- compat fp16 frame model


def part_compat_frame_fp16(ctx: Context) -> dict:
    fixture = ctx.fixture
    if not fixture or not os.path.isfile(os.path.join(fixture, "checkpoint.pth.tar")):
        raise Skip(f"release fixture not found at {fixture} (give --fixture DIR)")
    from real20m.utils.checkpoint_io import load_checkpoint
    from real20m.models.convert import build_model_from_release_config, load_weights_into
    with open(os.path.join(fixture, "config.json"), encoding="utf-8") as handle:
        release_cfg = json.load(handle)
    model = build_model_from_release_config(release_cfg)
    load_weights_into(model, load_checkpoint(os.path.join(fixture, "checkpoint.pth.tar")))
    model = model.to(ctx.device).eval()
    with np.load(os.path.join(fixture, "reference_io.npz")) as npz:
        reference = {name: npz[name] for name in npz.files}
    clip_length = int(((release_cfg.get("fusion") or {}).get("frame_transformer") or {}).get("T", 5))

    @torch.no_grad()
    def embed() -> dict:
        out = {}
        for kind, per_item in (("video", clip_length), ("goods", 1)):
            ids = torch.from_numpy(reference[f"{kind}_title_ids"]).to(ctx.device)
            pixels = torch.from_numpy(reference[f"{kind}_pixels"])
            pixels = pixels.view(pixels.shape[0] // per_item, per_item, *pixels.shape[1:]).to(ctx.device)
            items = model.encode_items(ids, None, pixels)
            out[f"{kind}_v_emb"] = items.visual.float().cpu().numpy()
            out[f"{kind}_doc_emb"] = F.normalize(items.fused.float(), dim=-1).cpu().numpy()
            out[f"{kind}_pool_weights"] = items.pool_weights.float().cpu().numpy()
        return out

    def max_diff(a: dict, b: dict) -> dict:
        return {name: float(np.abs(a[name] - b[name]).max()) for name in a}

    with exact_fp32():
        model.frame_fp16 = False
        fp32 = embed()
        model.frame_fp16 = True
        fp16 = embed()
        if ctx.cuda:
            # What --compat original evaluation runs on CUDA: the whole model under fp16 autocast
            # (encoder.autocast_dtype) with the fp16 frame transformer.
            with torch.autocast("cuda", dtype=torch.float16):
                autocast_fp16 = embed()
    reference_out = {name: reference[name] for name in fp32}
    result = {"device": str(ctx.device), "fixture": fixture, "frame_fp16_active": ctx.cuda,
              "fp32_vs_reference": max_diff(fp32, reference_out)}
    result["fp32_vs_reference_max"] = max(result["fp32_vs_reference"].values())
    if ctx.cuda:
        result["fp16_vs_fp32"] = max_diff(fp16, fp32)
        result["fp16_vs_fp32_max"] = max(result["fp16_vs_fp32"].values())
        result["fp16_vs_reference_max"] = max(max_diff(fp16, reference_out).values())
        result["compat_eval_autocast_fp16_vs_reference"] = max_diff(autocast_fp16, reference_out)
        result["compat_eval_autocast_fp16_vs_reference_max"] = max(
            result["compat_eval_autocast_fp16_vs_reference"].values())
    else:
        result["notes"] = ["CPU: frame_fp16 applies on CUDA only; only the fp32 path is compared"]
    del model
    free_memory(ctx)
    if not result["fp32_vs_reference_max"] <= 1e-4:
        raise CheckFailed(f"fp32 embeddings differ from the reference by {result['fp32_vs_reference_max']:.3g}", result)
    if ctx.cuda and not result["fp16_vs_fp32_max"] <= 1e-2:
        raise CheckFailed(f"fp16 frame transformer differs from fp32 by {result['fp16_vs_fp32_max']:.3g}", result)
    return result


# ------------------------------------------------------------------------------------ search


def faiss_gpu_available() -> bool:
    try:
        import faiss
    except Exception:  # noqa: BLE001
        return False
    return hasattr(faiss, "StandardGpuResources") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0


def torch_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int):
    """Exact inner-product top-k: one matmul + topk per chunk of queries (scores in the inputs' dtype)."""
    scores, indices = [], []
    for start in range(0, len(queries), chunk):
        values, rows = torch.topk(queries[start:start + chunk] @ gallery.T, k, dim=1)
        scores.append(values)
        indices.append(rows)
    return torch.cat(scores), torch.cat(indices)


def unit_vectors(count: int, dim: int, device, seed: int, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(seed)
    vectors = torch.randn(count, dim, device=device, generator=generator)
    return F.normalize(vectors, dim=1).to(dtype)


def ties_explained(queries: np.ndarray, gallery: np.ndarray, ids_a: np.ndarray, ids_b: np.ndarray) -> float:
    """Max over positions of |exact score of a's id - exact score of b's id| (float64): 0 up to
    rounding when both lists are valid top-k lists that differ only among tied items."""
    worst = 0.0
    for start in range(0, len(queries), 64):
        q = queries[start:start + 64].astype(np.float64)
        score_a = np.einsum("qkd,qd->qk", gallery[ids_a[start:start + 64]].astype(np.float64), q)
        score_b = np.einsum("qkd,qd->qk", gallery[ids_b[start:start + 64]].astype(np.float64), q)
        worst = max(worst, float(np.abs(score_a - score_b).max()))
    return worst


def _package_search():
    """``real20m.evaluate.search.search`` as (queries, gallery, k, use_gpu); raises where Faiss is missing."""
    from real20m.evaluate.faiss_backend import import_faiss
    from real20m.evaluate.search import search
    from real20m.evaluate.search_config import SearchConfig
    import_faiss()

    def package_search(queries, gallery, k, use_gpu):
        return search(queries, gallery, k, SearchConfig(use_gpu=use_gpu, show_progress=False))
    return package_search


def part_search(ctx: Context) -> dict:
    sizes = ctx.sizes["search"]
    chunk = sizes["query_chunk"]
    use_faiss_gpu = ctx.cuda and faiss_gpu_available()
    try:
        real20m_search = _package_search()
    except Exception as error:  # noqa: BLE001 - faiss missing: the package's search cannot run
        real20m_search, import_error = None, one_line(f"{type(error).__name__}: {error}", 160)
    notes = []
    result = {"device": str(ctx.device),
              "backend": "faiss-gpu (real20m.evaluate.search, use_gpu=True)" if use_faiss_gpu
              else f"torch matmul + topk on {ctx.device.type}"}
    if real20m_search is None:
        notes.append(f"real20m.evaluate.search not importable ({import_error}): CPU reference is torch on the CPU")

    # 1. Equality with the CPU search on the same features.
    n_queries, n_gallery, dim, k = sizes["check"]
    queries = unit_vectors(n_queries, dim, ctx.device, 1)
    gallery = unit_vectors(n_gallery, dim, ctx.device, 2)
    queries_np, gallery_np = queries.cpu().numpy(), gallery.cpu().numpy()
    started = time.perf_counter()
    if real20m_search is not None:
        cpu_scores, cpu_ids = real20m_search(queries_np, gallery_np, k, use_gpu=False)
        result["cpu_reference"] = "real20m.evaluate.search (faiss CPU, exact)"
    else:
        values, rows = torch_topk(torch.from_numpy(queries_np), torch.from_numpy(gallery_np), k, chunk)
        cpu_scores, cpu_ids = values.numpy(), rows.numpy()
        result["cpu_reference"] = "torch matmul + topk on the CPU"
    cpu_s = time.perf_counter() - started
    started = time.perf_counter()
    with exact_fp32():
        if use_faiss_gpu:
            dev_scores, dev_ids = real20m_search(queries_np, gallery_np, k, use_gpu=True)
        else:
            values, rows = torch_topk(queries, gallery, k, chunk)
            ctx.sync()
            dev_scores, dev_ids = values.float().cpu().numpy(), rows.cpu().numpy()
    dev_s = time.perf_counter() - started
    tie_gap = ties_explained(queries_np, gallery_np, dev_ids, cpu_ids)
    result["check"] = {"queries": n_queries, "gallery": n_gallery, "dim": dim, "k": k,
                       "ids_equal_fraction": float(np.mean(dev_ids == cpu_ids)),
                       "max_exact_score_gap_at_differing_ids": tie_gap, "ids_equal_up_to_ties": tie_gap <= 1e-5,
                       "score_max_abs_diff": float(np.abs(dev_scores - cpu_scores).max()),
                       "cpu_s": round(cpu_s, 3), "device_s": round(dev_s, 3)}
    del queries, gallery, queries_np, gallery_np
    free_memory(ctx)

    # 2. Time of a large exact search on the device (float32 without TF32, and float16).
    n_queries, n_gallery, dim, k = sizes["timing"]
    timing = {"queries": n_queries, "gallery": n_gallery, "dim": dim, "k": k, "query_chunk": chunk}
    results = {}
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        if not ctx.cuda and dtype == torch.float16:
            continue   # CPU matmul in fp16 is slow and not what anyone would run
        queries = unit_vectors(n_queries, dim, ctx.device, 3, dtype)
        gallery = unit_vectors(n_gallery, dim, ctx.device, 4, dtype)
        with exact_fp32():
            torch_topk(queries[:chunk], gallery, k, chunk)     # warm-up
            ctx.sync()
            started = time.perf_counter()
            values, rows = torch_topk(queries, gallery, k, chunk)
            ctx.sync()
            elapsed = time.perf_counter() - started
        results[name] = rows[:chunk].cpu().numpy()
        timing[f"torch_{name}_s"] = round(elapsed, 3)
        timing[f"torch_{name}_queries_per_s"] = rounded(n_queries / elapsed)
        if name == "fp32" and use_faiss_gpu:
            queries_np, gallery_np = queries.cpu().numpy(), gallery.cpu().numpy()
            started = time.perf_counter()
            real20m_search(queries_np, gallery_np, k, use_gpu=True)
            timing["faiss_gpu_fp32_s_with_copy"] = round(time.perf_counter() - started, 3)
            del queries_np, gallery_np
        del queries, gallery, values, rows
        free_memory(ctx)
    if "fp16" in results:
        overlap = [len(np.intersect1d(a, b)) / k for a, b in zip(results["fp16"], results["fp32"])]
        timing["fp16_recall_vs_fp32"] = float(np.mean(overlap))
    timing["peak_mem_gb"] = peak_gb(ctx)
    result["timing"] = timing
    if notes:
        result["notes"] = notes
    if not result["check"]["ids_equal_up_to_ties"] or not result["check"]["score_max_abs_diff"] <= 1e-4:
        raise CheckFailed("device search differs from the CPU search (see check)", result)
    return result


# -------------------------------------------------------------------------------------- JPEG


def synthetic_jpegs(count: int, height: int, width: int) -> list[bytes]:
    """Smooth gradients, stripes and mild noise (what frames look like to a JPEG codec), quality 90."""
    from PIL import Image
    rng = np.random.default_rng(0)
    y, x = np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None, :]
    noise = rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    green = np.broadcast_to(255 * y / max(1, height - 1), (height, width))
    files = []
    for index in range(count):
        phase = index * 0.7
        red = np.broadcast_to(128 + 100 * np.sin(x / (17 + index % 5) + phase), (height, width))
        blue = 128 + 90 * np.cos((x + y) / (29 + index % 7) - phase)
        image = np.stack([red, green, blue], axis=-1) + np.roll(noise, 37 * index, axis=1)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        files.append(buffer.getvalue())
    return files


def part_jpeg(ctx: Context) -> dict:
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as error:  # noqa: BLE001
        raise Skip(f"torchvision.io.decode_jpeg not importable: {one_line(error, 160)}") from None
    from PIL import Image
    sizes = ctx.sizes["jpeg"]
    files = synthetic_jpegs(sizes["images"], sizes["height"], sizes["width"])
    datas = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in files]
    result = {"device": str(ctx.device), "images": len(files), "height": sizes["height"], "width": sizes["width"],
              "quality": 90}

    started = time.perf_counter()
    pil = [torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
           for data in files]
    result["pil_images_per_s"] = rounded(len(files) / (time.perf_counter() - started))
    started = time.perf_counter()
    cpu = decode_jpeg(datas, mode=ImageReadMode.RGB)
    result["torchvision_cpu_images_per_s"] = rounded(len(files) / (time.perf_counter() - started))
    result["torchvision_cpu_vs_pil_max_abs_diff"] = max(int((a.int() - b.int()).abs().max()) for a, b in zip(cpu, pil))

    def decoder_figures(device: str) -> dict:
        """DeviceJpegDecoder (evaluation geometry) vs EvalTransform on PIL images, clips of T frames."""
        from real20m.datasets import transforms
        if not hasattr(transforms, "DeviceJpegDecoder"):
            return {"status": "absent from real20m.datasets.transforms"}
        length, size = sizes["clip_length"], sizes["image_size"]
        clips = len(files) // length
        decoder, reference = transforms.DeviceJpegDecoder(size, train=False, device=device), \
            transforms.EvalTransform(size)
        jpegs = [datas[i * length:(i + 1) * length] for i in range(clips)]
        plans = [torch.tensor([reference.plan(sizes["width"], sizes["height"])] * length, dtype=torch.int64)
                 for _ in range(clips)]
        decoder(jpegs[:1], plans[:1])   # warm-up
        ctx.sync()
        started = time.perf_counter()
        out = decoder(jpegs, plans)
        ctx.sync()
        elapsed = time.perf_counter() - started
        started = time.perf_counter()
        expected = torch.stack([reference(Image.open(io.BytesIO(files[i])).convert("RGB"))
                                for i in range(clips * length)]).view(clips, length, 3, size, size)
        cpu_elapsed = time.perf_counter() - started
        diff = (out.cpu().int() - expected.int()).abs()
        return {"clips": clips, "image_size": size, "clips_per_s": rounded(clips / elapsed),
                "pil_eval_transform_clips_per_s": rounded(clips / cpu_elapsed),
                "max_abs_diff_vs_eval_transform": int(diff.max()),
                "mean_abs_diff_vs_eval_transform": rounded(float(diff.float().mean()))}

    if not ctx.cuda:
        result["device_decoder_cpu"] = decoder_figures("cpu")
        raise Skip("needs CUDA (nvjpeg); the CPU set-up ran: torchvision CPU decode vs PIL max diff "
                   f"{result['torchvision_cpu_vs_pil_max_abs_diff']}", figures=result)
    decode_jpeg(datas[:4], mode=ImageReadMode.RGB, device="cuda")   # warm-up (nvjpeg handles)
    ctx.sync()
    started = time.perf_counter()
    gpu = decode_jpeg(datas, mode=ImageReadMode.RGB, device="cuda")
    ctx.sync()
    result["gpu_batch_images_per_s"] = rounded(len(files) / (time.perf_counter() - started))
    diffs = [(a.cpu().int() - b.int()).abs() for a, b in zip(gpu, pil)]
    result["gpu_vs_pil_max_abs_diff"] = max(int(d.max()) for d in diffs)
    result["gpu_vs_pil_mean_abs_diff"] = rounded(float(np.mean([float(d.float().mean()) for d in diffs])))
    result["gpu_vs_pil_fraction_above_2"] = rounded(float(np.mean([float((d > 2).float().mean()) for d in diffs])))
    del gpu, diffs
    problems = []
    try:
        result["device_decoder_cuda"] = decoder_figures("cuda")
    except Exception as error:  # noqa: BLE001 - the raw nvjpeg figures above still count
        result["device_decoder_cuda"] = {"error": one_line(f"{type(error).__name__}: {error}")}
        problems.append(f"DeviceJpegDecoder on CUDA: {type(error).__name__}")
    free_memory(ctx)
    if not result["gpu_vs_pil_mean_abs_diff"] <= 3:
        problems.append(f"nvjpeg output far from PIL: mean abs diff {result['gpu_vs_pil_mean_abs_diff']}")
    if problems:
        raise CheckFailed("; ".join(problems), result)
    return result


# -------------------------------------------------------------------------------------- main


PARTS = {
    "train_fp16": (part_train_fp16, "train"),
    "train_bf16": (part_train_bf16, "train"),
    "resume": (part_resume, "resume"),
    "nccl": (part_nccl, "nccl"),
    "paper_arch": (part_paper_arch, "paper"),
    "extract_autocast": (part_extract_autocast, "extract"),
    "compat_frame_fp16": (part_compat_frame_fp16, "compat"),
    "search": (part_search, "search"),
    "jpeg": (part_jpeg, "jpeg"),
}
assert tuple(PARTS) == PART_NAMES


def run_part(ctx: Context, name: str, remaining_s: float) -> dict:
    function, sizes_key = PARTS[name]
    sizes = ctx.sizes[sizes_key]
    limit = min(sizes.get("hard_limit_s", sizes.get("timeout_s", 120) + 15), max(remaining_s, 5.0))
    started = time.perf_counter()
    try:
        with hard_limit(limit):
            figures = function(ctx)
        result = {"status": "ok", **figures}
    except Skip as skip:
        result = {"status": "skipped", "reason": one_line(skip), **skip.figures}
    except CheckFailed as failed:
        result = {**failed.figures, "status": "failed", "error": one_line(f"check failed: {failed}")}
    except (Exception, PartTimeout) as error:  # noqa: BLE001 - every failure is reported, the next part runs
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{os.path.relpath(frames[-1].filename, ROOT)}:{frames[-1].lineno}" if frames else None
        result = {"status": "failed", "error": one_line(f"{type(error).__name__}: {error}"), "where": where}
        log.warning("%s failed:\n%s", name, "".join(traceback.format_exception(error))[-4000:])
    finally:
        free_memory(ctx)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry_run", action="store_true", help="tiny sizes on the CPU (CI): tests the script itself")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    parser.add_argument("--only", default=None, help=f"comma-separated parts to run (others: skipped); "
                                                     f"of {', '.join(PART_NAMES)}")
    parser.add_argument("--fixture", default=DEFAULT_FIXTURE, help="release fixture folder (upstream_ckpt_tiny)")
    parser.add_argument("--nccl_procs", type=int, default=0, help="torchrun processes of the nccl part "
                                                                  "(default: 1 on CUDA, 2 gloo ones in the dry run)")
    parser.add_argument("--budget_s", type=float, default=None, help="total time budget; parts left when it is "
                                                                     "spent are skipped (default 285, dry run 240)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--_dist_worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._dist_worker:
        return dist_worker(args._dist_worker)
    logging.basicConfig(level=logging.WARNING, format="[gpu_check] %(message)s", stream=sys.stderr)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry_run to test the script on the CPU", file=sys.stderr)
        result = {"schema": SCHEMA, "dry_run": False, "device": "cpu", "error": "no CUDA device", "parts": {}}
        write_result(result, args.out)
        return 2
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    budget = args.budget_s if args.budget_s is not None else sizes["budget_s"]
    only = set(args.only.split(",")) if args.only else None
    if only and only - set(PART_NAMES):
        raise SystemExit(f"--only: unknown part(s) {sorted(only - set(PART_NAMES))}; known: {', '.join(PART_NAMES)}")
    workdir = args.workdir or tempfile.mkdtemp(prefix="real20m_gpu_check_")
    os.makedirs(workdir, exist_ok=True)
    ctx = Context(dry_run=args.dry_run, device=device, sizes=sizes, workdir=workdir,
                  fixture=args.fixture, nccl_procs=args.nccl_procs)
    if ctx.cuda:
        torch.cuda.set_device(device)
    started = time.perf_counter()
    parts = {}
    try:
        for name in PART_NAMES:
            elapsed = time.perf_counter() - started
            if only is not None and name not in only:
                parts[name] = {"status": "skipped", "reason": "not selected (--only)", "seconds": 0.0}
            elif elapsed >= budget:
                parts[name] = {"status": "skipped", "reason": f"time budget of {budget:.0f} s spent", "seconds": 0.0}
            else:
                log.warning("part %s ...", name)
                parts[name] = run_part(ctx, name, budget - elapsed)
                log.warning("part %s: %s (%.1f s)", name, parts[name]["status"], parts[name]["seconds"])
    finally:
        ctx.cache.clear()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = {status: sum(1 for part in parts.values() if part["status"] == status)
               for status in ("ok", "skipped", "failed")}
    device_name = f"{device} ({torch.cuda.get_device_name(device)})" if ctx.cuda else "cpu"
    result = finite_or_str({"schema": SCHEMA, "dry_run": args.dry_run, "device": device_name,
                            "env": environment(ctx), "total_s": round(time.perf_counter() - started, 1),
                            "summary": summary, "parts": parts})
    write_result(result, args.out)
    return 1 if summary["failed"] else 0


def write_result(result: dict, out: str | None) -> None:
    """The JSON line to ``out`` (when given) and, last, to stdout."""
    line = json.dumps(result, allow_nan=False)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
