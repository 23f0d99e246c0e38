"""The trainer kit: what every vqldm training loop shares, so that the loops cannot drift apart.

The loops themselves stay flat and visible in each stage's ``train.py`` (build -> resume -> loop ->
export); they call these helpers for the steps they have in common:

* ``TrainLoopConfig`` -- loop settings; ``check_max_steps`` validates ``--max-steps`` the same way
  everywhere (before anything is created).
* ``make_accelerator`` -- accelerate on CPU, one GPU or many processes (a gloo group on CPU).
* ``learning_rate`` / ``set_learning_rate`` -- warm-up then constant or cosine, a pure function of the
  *optimizer* step (``step // grad_accumulation``), so every loop schedules the same and resume needs
  no scheduler state.
* ``optimizer_step`` -- backward, gradient clipping on the accumulation boundary, step, zero_grad.
* ``StepGuard`` -- every skip/stop decision of a loop, agreed by all processes at the same step in one
  reduce: the NaN policy (skip one bad batch -- the batch is consumed: the loop advances its step, so a
  resumed run draws the same batches as an uninterrupted one -- and stop on the next), a SIGINT/SIGTERM
  (``StopSignals`` catches it; ``stop_if_signalled`` saves a checkpoint and exits 130/143) and the time
  budget ``train.max_seconds`` (``keep_training``, the loop condition). One process deciding alone would
  leave the others waiting in a collective: a DDP run would hang instead of skipping or stopping.
* ``TrainClock`` -- training seconds that keep counting across ``--resume``.
* ``resume_training`` / ``save_training_state`` -- one checkpoint convention: modules and optimizers by
  name, the torch CPU RNG, ``step`` and ``train_seconds`` in ``state.json``; one wording for a checkpoint
  that does not match the config.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch

from .checkpoint import (
    describe_load_error,
    latest_checkpoint,
    load_training_checkpoint,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    save_training_checkpoint,
)
from .errors import UserError


@dataclass
class TrainLoopConfig:
    """Loop settings common to both trainers (per-process batch size; global = batch_size x processes)."""

    max_steps: int = 5000  # loop steps (batches); optimizer steps = max_steps // grad_accumulation
    batch_size: int = 64
    lr: float = 2e-4
    adam_betas: list[float] = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warm-up; cosine decays to lr x min_lr_ratio
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    grad_accumulation: int = 1
    # autocast on GPU; CPU runs stay fp32. auto: bf16 where the GPU supports it (no loss scaling needed),
    # else fp16, else (CPU) none
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "no"
    # fp32 matmuls and convolutions on Ampere and newer GPUs in TF32 (10-bit mantissa inputs, fp32 sums: what
    # PyTorch's own default is for cuDNN convolutions); false: exact fp32 everywhere. No effect on CPU.
    tf32: bool = True
    seed: int = 0
    log_every: int = 50
    image_every: int = 1000  # reconstruction / sample grids
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    skip_nonfinite_once: bool = True  # skip one bad batch with a warning before stopping on NaN/inf
    # stop after this many seconds of training (all sessions of the run), at an optimizer step, then save and
    # export as at max_steps: a time budget (the learning-rate schedule still runs over max_steps)
    max_seconds: float | None = None
    progress: bool = True

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "log_every", "image_every", "checkpoint_every", "grad_accumulation"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "checkpoint_every"):
            # checkpoints and resumes sit on optimizer-step boundaries: a resume mid-window would lose the
            # gradients summed so far and shift every later boundary
            if getattr(self, name) % self.grad_accumulation:
                raise ValueError(f"train.{name} ({getattr(self, name)}) must be a multiple of train.grad_accumulation "
                                 f"({self.grad_accumulation})")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"train.max_seconds must be > 0 or null, got {self.max_seconds}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.adam_betas) != 2:
            raise ValueError("train.adam_betas must be two numbers")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)


@dataclass
class EMATrainLoopConfig(TrainLoopConfig):
    """Loop settings of a trainer that keeps an EMA of its weights (latent diffusion, priors)."""

    # EMA of the weights; with ema_warmup the decay is min(decay, (1+n)/(10+n)) at update n, so short runs
    # are not dominated by the random initialisation
    ema_decay: float = 0.999
    ema_warmup: bool = True
    num_sample_images: int = 16  # images in each periodic sample grid (RUN/images)

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.num_sample_images < 1:
            raise ValueError(f"train.num_sample_images must be >= 1, got {self.num_sample_images}")


def due(step: int, every: int, tc: TrainLoopConfig) -> bool:
    """True at every ``every``-th step and at the last one (logs, grids)."""
    return step % every == 0 or step == tc.max_steps


class LossWindow:
    """Means of the training scalars over the steps since the last log line, averaged over every process.

    Values stay where they are (on the device) until the log step: adding one costs no host sync. Each
    scalar is averaged over the steps that reported it (a loss term that switches on mid-window, like the
    discriminator's, is not diluted by the steps before it). ``loss`` is the scalar every loop reports."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.last: dict[str, float] = {}
        self.last_mean = float("nan")

    def add(self, loss: torch.Tensor, **others) -> None:
        for key, value in {"loss": loss, **others}.items():
            value = torch.as_tensor(value).detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self, accelerator) -> dict[str, float]:
        """Every scalar's mean, reduced over processes in one call (all processes report the same keys),
        remembered as ``last`` / ``last_mean``; then a new window starts."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        local = torch.stack([self.sums[k].to(accelerator.device) / self.counts[k] for k in keys])
        values = accelerator.reduce(local, "mean").cpu().tolist()
        self.last = dict(zip(keys, values))
        self.last_mean = self.last.get("loss", float("nan"))
        self.sums, self.counts = {}, {}
        return dict(self.last)

    def mean(self, accelerator) -> float:
        """The mean ``loss`` of the window (see :meth:`means`)."""
        return self.means(accelerator).get("loss", float("nan"))


def run_metrics(step: int, steps_done: int, clock: TrainClock, tc: TrainLoopConfig, accelerator, parameters: int,
                final_loss: float, **extra) -> dict:
    """The ``metrics.json`` fields every trainer writes, plus the stage's own ``extra``."""
    session = clock.session()
    return {
        "step": step,
        "steps_this_session": steps_done,
        "processes": accelerator.num_processes,
        "final_loss": final_loss,
        "steps_per_s": steps_done / session if session > 0 else None,
        "images_per_s": steps_done * tc.batch_size * accelerator.num_processes / session if session > 0 else None,
        "train_seconds": clock.total(),  # all sessions of this run (resumes included)
        "session_seconds": session,
        "global_batch": tc.batch_size * accelerator.num_processes,
        "parameters": parameters,
        "torch_threads": torch.get_num_threads(),
        # this process's peak; None on CPU
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        **extra,
    }


def check_max_steps(max_steps: int | None, grad_accumulation: int = 1) -> None:
    """A trainer's ``max_steps`` override must be a positive integer and a multiple of
    ``train.grad_accumulation`` (runs end on an optimizer step); checked before any file is created."""
    if max_steps is None:
        return
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if max_steps % grad_accumulation:
        raise ValueError(f"max_steps ({max_steps}) must be a multiple of train.grad_accumulation ({grad_accumulation}): "
                         f"runs end on an optimizer step")


def autocast_precision(setting: str, cuda: bool, bf16_supported: bool) -> str:
    """The autocast precision a run trains in: none on CPU; ``auto`` is bf16 where the GPU has it (the same
    exponent range as fp32: no loss scaling), else fp16 (with accelerate's gradient scaler)."""
    if not cuda:
        return "no"
    if setting == "auto":
        return "bf16" if bf16_supported else "fp16"
    return setting


def make_accelerator(cfg: TrainLoopConfig):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    mp = autocast_precision(cfg.mixed_precision, torch.cuda.is_available(), torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32  # this run's setting, for every matmul and convolution
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    # Several processes started by torchrun / `accelerate launch --multi_gpu` on a machine without CUDA:
    # accelerate only forms a gloo (MULTI_CPU) group when told cpu=True; otherwise each process would
    # silently train alone. (`accelerate launch --cpu` starts several processes only through mpirun.)
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    acc = Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accumulation, cpu=multi_cpu)
    set_seed(cfg.seed, device_specific=False)
    return acc


class StopSignals:
    """While active, SIGINT/SIGTERM set ``requested`` instead of killing the process, so the loop can
    save a checkpoint and exit cleanly. A second signal restores the default behaviour."""

    def __init__(self):
        self.requested: str | None = None
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.requested is not None:  # second signal: give up immediately
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class StepGuard:
    """The skip and stop decisions of a training loop, taken by every process at the same step.

    :meth:`check` runs once per step, after the loss and before backward. It reduces (max over processes,
    one ``all_reduce`` of three numbers) what each process saw: a non-finite loss, a SIGINT/SIGTERM
    (:class:`StopSignals`), the time budget ``train.max_seconds`` spent (:class:`TrainClock`). So if one
    process alone sees a NaN, every process skips that batch; if one alone is signalled, every process
    saves and stops after the same step; the slowest clock decides the budget. A single process needs no
    reduce. The budget is also agreed once at the start, so a resumed run that is already out of time
    runs no step.
    """

    def __init__(self, tc: TrainLoopConfig, signals: "StopSignals", clock: "TrainClock", accelerator=None, log=print):
        self.allow_skip, self.max_seconds, self.grad_accumulation = tc.skip_nonfinite_once, tc.max_seconds, tc.grad_accumulation
        self.signals, self.clock, self.accelerator, self.log = signals, clock, accelerator, log
        self.skipped = 0
        self.stop_signal: str | None = None  # agreed: the signal every process stops for
        self.out_of_time = False  # agreed: the time budget is spent
        if self.max_seconds is not None:
            self._agree(0.0)

    def _over_budget(self) -> bool:
        return self.max_seconds is not None and self.clock.total() >= self.max_seconds

    def _agree(self, nonfinite: float) -> bool:
        signum = float(signal.Signals[self.signals.requested]) if self.signals.requested else 0.0
        local = [nonfinite, signum, float(self._over_budget())]
        acc = self.accelerator
        if acc is not None and acc.num_processes > 1:
            agreed = acc.reduce(torch.tensor(local, dtype=torch.float64, device=acc.device), "max").tolist()
        else:
            agreed = local
        if agreed[1] and self.stop_signal is None:
            self.stop_signal = signal.Signals(int(agreed[1])).name
        self.out_of_time = self.out_of_time or bool(agreed[2])
        return bool(agreed[0])

    def check(self, loss: torch.Tensor, step: int, last_checkpoint: Path | None, optimizer=None) -> bool:
        """True if the step may proceed; False if every process skips this batch (``optimizer``'s gradients
        are cleared then). On a second non-finite loss every process raises the same UserError."""
        value = float(loss.detach())
        if not self._agree(float(not math.isfinite(value))):
            return True
        here = not math.isfinite(value)
        if self.allow_skip and self.skipped == 0:
            self.skipped += 1
            seen = f"loss is {value}" if here else "the loss of another process is not finite"
            self.log(f"warning: {seen} at step {step}; skipping this batch once (on every process)")
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            return False
        seen = f"loss became {value}" if here else "the loss of another process became non-finite"
        where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
        raise UserError(f"{seen} at step {step} ({where}); lower train.lr, enable train.grad_clip, or check the data, then --resume")


def stop_if_signalled(guard: StepGuard, step: int, save_checkpoint, bar, logger=None, run_dir: Path | None = None) -> None:
    """After an agreed SIGINT/SIGTERM: save a checkpoint, close the bar and logs, and stop with one line. Under
    gradient accumulation the loop runs on to the next optimizer step first (at most k - 1 micro-batches),
    so the checkpoint holds no half-summed gradients and the resumed run stays bit-exact. A loop that does
    not resume (``save_checkpoint=None``) stops saying that nothing was saved."""
    if not guard.stop_signal or step % guard.grad_accumulation:
        return
    path = save_checkpoint(step) if save_checkpoint is not None else None
    bar.close()
    if logger is not None:
        logger.close()
    if save_checkpoint is None:
        stop = UserError(f"stopped by {guard.stop_signal} at step {step}; nothing was saved (this run does not resume); run it again")
    else:
        stop = UserError(f"stopped by {guard.stop_signal} at step {step}; checkpoint saved to {path or run_dir}; continue with --resume")
    stop.exit_code = 128 + int(signal.Signals[guard.stop_signal])  # the shell convention: 130 for SIGINT, 143 for SIGTERM
    raise stop


def lr_lambda(warmup_steps: int, schedule: str = "constant", max_steps: int = 0, min_ratio: float = 0.0):
    """Learning-rate multiplier for an optimizer step: linear warm-up, then constant or a cosine decay that
    reaches ``min_ratio`` at ``max_steps``. A pure function of the step, so resuming needs no state."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant" or max_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (max_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The CPU generator for the random draws of one (step, process): noise, timesteps, masks, label
    dropout. A function of (seed, step, rank) alone, so a resumed run draws exactly what an uninterrupted
    run would, on every process, with no generator state to carry."""
    digest = hashlib.sha256(f"vqldm-noise:{seed}:{step}:{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def optimizer_steps(tc: TrainLoopConfig) -> int:
    """How many optimizer steps a run of ``tc.max_steps`` loop steps makes."""
    return max(1, tc.max_steps // tc.grad_accumulation)


def learning_rate(tc: TrainLoopConfig, step: int) -> float:
    """The learning rate at loop step ``step``: ``tc.lr`` times the schedule at optimizer step
    ``step // grad_accumulation`` (warm-up and decay are counted in optimizer steps in every loop)."""
    multiplier = lr_lambda(tc.warmup_steps, tc.lr_schedule, optimizer_steps(tc), tc.min_lr_ratio)
    return tc.lr * multiplier(step // tc.grad_accumulation)


def adamw(parameters, tc: TrainLoopConfig, device: torch.device | str = "cpu") -> torch.optim.AdamW:
    """The optimizer of every vqldm trainer: AdamW with the loop's lr, betas and weight decay; on CUDA the
    fused kernel (one launch for all parameters instead of several per tensor; the same update)."""
    fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(parameters, lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay, fused=fused or None)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(loss: torch.Tensor, optimizer, parameters, grad_clip: float | None, accelerator=None) -> None:
    """Backward, clip the gradient norm where gradients are synchronised (the accumulation boundary),
    step and clear. Under accumulation accelerate's prepared optimizer skips the step between boundaries.
    Without an accelerator (a plain single-process loop) every call is a boundary."""
    if accelerator is None:
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    else:
        accelerator.backward(loss)
        if grad_clip and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class TrainClock:
    """Training time in seconds, counting earlier sessions of a resumed run (``state.json`` train_seconds)."""

    def __init__(self, seconds_before: float = 0.0):
        self.seconds_before = float(seconds_before)
        self.start = time.perf_counter()
        self.stopped: float | None = None

    def stop(self) -> None:
        """End of the training loop: the final checkpoint and metrics.json report the same seconds."""
        self.stopped = time.perf_counter()

    def session(self) -> float:
        return (self.stopped or time.perf_counter()) - self.start

    def total(self) -> float:
        return self.seconds_before + self.session()


def keep_training(tc: TrainLoopConfig, step: int, guard: StepGuard) -> bool:
    """The loop condition of every trainer: steps left and, with ``train.max_seconds``, time left -- as agreed
    by all processes (:class:`StepGuard`), acted on at optimizer-step boundaries."""
    if step >= tc.max_steps:
        return False
    return not (guard.out_of_time and step % tc.grad_accumulation == 0)


def _restoring(ckpt: Path, fn: Callable[[], None]) -> None:
    try:
        fn()
    except (KeyError, RuntimeError, ValueError) as err:
        raise UserError(
            f"checkpoint {ckpt} does not match this config ({describe_load_error(err)}); "
            f"resume with the config it was trained with"
        ) from None


@dataclass
class Resumed:
    """What :func:`resume_training` restored: the step to continue from, the training seconds so far, and
    the checkpoint's files and state (for what a stage keeps beyond modules and optimizers)."""

    step: int = 0
    seconds: float = 0.0
    checkpoint: Path | None = None
    files: dict | None = None
    state: dict | None = None

    def restore(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (a stage's own restore); a mismatch is the same one-line error as for the modules."""
        _restoring(self.checkpoint, fn)


def resume_training(run_dir: Path, resume: bool, modules: dict, optimizers: dict, log=print) -> Resumed:
    """With ``--resume``, load the newest complete checkpoint of ``run_dir`` into ``modules`` (name ->
    nn.Module, file ``name.safetensors``) and ``optimizers`` (name -> optimizer, tensors in
    ``name.safetensors``, the rest in ``state.json[name]``), and restore the torch CPU RNG."""
    ckpt = latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None:
        log(f"no checkpoint in {run_dir}; starting a new run")
    if ckpt is None:
        return Resumed()
    files, state = load_training_checkpoint(ckpt)

    def load_all():
        for name, module in modules.items():
            module.load_state_dict(files[name])
        for name, opt in optimizers.items():
            opt.load_state_dict(optimizer_state_from_tensors(files[name], state[name]))

    _restoring(ckpt, load_all)
    torch.set_rng_state(files["rng"]["torch_cpu"])
    resumed = Resumed(int(state["step"]), float(state.get("train_seconds", 0.0)), ckpt, files, state)
    log(f"resumed from {ckpt} at step {resumed.step}")
    return resumed


def save_training_state(run_dir: Path, step: int, clock: TrainClock, keep: int, modules: dict, optimizers: dict,
                        rng: dict | None = None, state: dict | None = None, tensors: dict | None = None) -> Path:
    """Write checkpoint ``step`` with the convention :func:`resume_training` reads; ``rng`` adds generator
    states beside the torch CPU RNG, ``state`` JSON values and ``tensors`` extra safetensors files."""
    files = {name: module.state_dict() for name, module in modules.items()}
    meta = {"step": step, "train_seconds": clock.total()}
    for name, opt in optimizers.items():
        files[name], meta[name] = optimizer_state_to_tensors(opt.state_dict())
    files["rng"] = {"torch_cpu": torch.get_rng_state(), **(rng or {})}
    files.update(tensors or {})
    meta.update(state or {})
    return save_training_checkpoint(run_dir, step, files, meta, keep=keep)
