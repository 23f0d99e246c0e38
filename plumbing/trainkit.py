"""The trainer kit: what every vqldm training loop shares, so that the loops cannot drift apart.

The loops themselves stay flat and visible in each stage's ``train.py`` (build -> resume -> loop ->
export); they call these helpers for the steps they have in common:

* ``TrainLoopConfig`` -- loop settings; ``check_max_steps`` validates ``--max-steps`` the same way
  everywhere (before anything is created).
* ``make_accelerator`` -- accelerate on CPU, one GPU or many processes (a gloo group on CPU).
* ``learning_rate`` / ``set_learning_rate`` -- warm-up then constant or cosine, a pure function of the
  *optimizer* step (``step // grad_accumulation``), so every loop schedules the same and resume needs
  no scheduler state.
* ``optimizer_step`` -- backward, gradient clipping on the accumulation boundary, step, zero_grad; with
  the guard, a bad step is skipped by the fused AdamW on the device (``found_inf``).
* ``StepGuard`` -- every skip/stop decision of a loop, agreed by all processes at the same step, with no
  device-to-host read on the hot path: the NaN policy (skip one bad batch -- the batch is consumed: the
  loop advances its step, so a resumed run draws the same batches as an uninterrupted one -- and stop on
  the next; decided on the device, reported at the next settle point), a SIGINT/SIGTERM (``StopSignals``
  catches it; ``stop_if_signalled`` saves a checkpoint and exits 130/143) and the time budget
  ``train.max_seconds`` (``keep_training``, the loop condition), both agreed over a CPU gloo group. One
  process deciding alone would leave the others waiting in a collective: a DDP run would hang instead of
  skipping or stopping.
* ``to_device`` -- CPU-drawn tensors (noise, masks, batches) to the GPU without a host wait.
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
    # weights (and so the activations of their convolutions) in channels-last memory order. auto: on CUDA,
    # where cuDNN's NHWC kernels are the fast ones under autocast; off on CPU, where it is within the noise
    # (0.956x and 1.035x the contiguous step time in two measurements). Results agree to float rounding.
    channels_last: bool | Literal["auto"] = "auto"
    # torch.compile (inductor, through accelerate's dynamo plugin) of the trained model(s): opt-in, because
    # the first step pays the compilation (minutes on a CPU), which on a CPU never paid back (3.9x the eager step);
    # docs/results.md "Training step: host reads, channels_last and torch.compile"
    compile: bool = False
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
        self.counts: dict[str, torch.Tensor] = {}
        self.last: dict[str, float] = {}
        self.last_mean = float("nan")

    def add(self, loss: torch.Tensor, **others) -> None:
        """Add this step's scalars; a non-finite value (a step the guard skips) is left out of its mean."""
        for key, value in {"loss": loss, **others}.items():
            value = torch.as_tensor(value).detach().float()
            finite = torch.isfinite(value)
            value = torch.where(finite, value, torch.zeros_like(value))
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
            self.counts[key] = self.counts[key] + finite if key in self.counts else finite.float()

    def means(self, accelerator) -> dict[str, float]:
        """Every scalar's mean, reduced over processes in one call (all processes report the same keys),
        remembered as ``last`` / ``last_mean``; then a new window starts."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        local = torch.stack([(self.sums[k] / self.counts[k]).to(accelerator.device) for k in keys])
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
    acc = Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accumulation, cpu=multi_cpu,
                      dynamo_backend="inductor" if cfg.compile else "no")
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
    """The skip and stop decisions of a training loop, taken by every process at the same step, with no
    host synchronisation on the hot path.

    * **Non-finite steps** are found and skipped on the device. :meth:`check` (after the loss) notes whether
      the loss is finite; :func:`optimizer_step` adds the total gradient norm at the accumulation boundary
      (after DDP's all-reduce, so a NaN on one process is seen by all) and hands the verdict to the fused
      AdamW as ``found_inf``: a bad step leaves weights, moments and step count untouched, and the EMA
      (:meth:`EMA.update`'s ``skip``) stands still. The host reads the tally only at a settle point
      (:meth:`after_step`: every ``min(log_every, 50)`` steps, at checkpoints and at the end) -- so the
      warning for the first skipped step, and the error for the second (``train.skip_nonfinite_once``),
      arrive there, naming the exact step; no checkpoint is ever written past the error.
    * **SIGINT/SIGTERM** (:class:`StopSignals`) and the time budget ``train.max_seconds`` (:class:`TrainClock`)
      are host facts. One process reads them every step; several processes post them in :meth:`check`
      (an asynchronous all-reduce, max, over a CPU gloo group: it never touches the GPU queue) and read the
      agreed result in :meth:`after_step` of the same step. So if one process alone is signalled, every
      process saves and stops after the same step; the slowest clock decides the budget. The budget is
      also agreed once at the start, so a resumed run that is already out of time runs no step.
    * Under fp16 autocast the gradient scaler skips overflowing steps itself (as it must, many times early
      on); then only non-finite *losses* count as bad steps.
    """

    def __init__(self, tc: TrainLoopConfig, signals: "StopSignals", clock: "TrainClock", accelerator=None, log=print):
        self.allow_skip, self.max_seconds, self.grad_accumulation = tc.skip_nonfinite_once, tc.max_seconds, tc.grad_accumulation
        self.settle_every = min(tc.log_every, 50)
        self.checkpoint_every, self.max_steps = tc.checkpoint_every, tc.max_steps
        self.signals, self.clock, self.accelerator, self.log = signals, clock, accelerator, log
        self.skipped = 0  # optimizer steps skipped (known on the host as of the last settle point)
        self.stop_signal: str | None = None  # agreed: the signal every process stops for
        self.out_of_time = False  # agreed: the time budget is spent
        self.last_checkpoint: Path | None = None
        device = accelerator.device if accelerator is not None else torch.device("cpu")
        self.multi = accelerator is not None and accelerator.num_processes > 1
        self.fp16 = accelerator is not None and getattr(accelerator, "scaler", None) is not None
        # on the device: bad steps so far; (step, loss was non-finite here, its value) of the first and last
        self._count = torch.zeros((), dtype=torch.float64, device=device)
        self._first = torch.full((3,), -1.0, dtype=torch.float64, device=device)
        self._last = self._first.clone()
        self._window_bad = torch.zeros((), dtype=torch.bool, device=device)  # this accumulation window's losses
        self._window_value = torch.zeros((), dtype=torch.float64, device=device)
        self.found: torch.Tensor | None = None  # the last optimizer step's verdict (bool, on the device)
        self._step = 0
        self._group, self._flags, self._pending = None, None, None
        if self.multi:
            import torch.distributed as dist

            # host flags travel over gloo on CPU tensors; a GPU run gets its own gloo group for them
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
            self._flags = torch.zeros(2, dtype=torch.float64)
        if self.max_seconds is not None:
            self._post()
            self._receive()

    # ------------------------------------------------------------------ host flags (signal, budget)
    def _over_budget(self) -> bool:
        return self.max_seconds is not None and self.clock.total() >= self.max_seconds

    def _local_flags(self) -> list[float]:
        signum = float(signal.Signals[self.signals.requested]) if self.signals.requested else 0.0
        return [signum, float(self._over_budget())]

    def _post(self) -> None:
        if not self.multi:
            return
        import torch.distributed as dist

        self._flags = torch.tensor(self._local_flags(), dtype=torch.float64)
        self._pending = dist.all_reduce(self._flags, op=dist.ReduceOp.MAX, group=self._group, async_op=True)

    def _receive(self) -> None:
        if self.multi:
            if self._pending is None:
                return
            self._pending.wait()
            self._pending = None
            agreed = self._flags.tolist()  # a CPU tensor: no device synchronisation
        else:
            agreed = self._local_flags()
        if agreed[0] and self.stop_signal is None:
            self.stop_signal = signal.Signals(int(agreed[0])).name
        self.out_of_time = self.out_of_time or bool(agreed[1])

    # ------------------------------------------------------------------ the step
    def check(self, loss: torch.Tensor, step: int, last_checkpoint: Path | None = None, optimizer=None) -> bool:
        """Once per loop step, after the loss and before backward: note (on the device) whether the loss is
        finite and post this process's signal/budget flags. Returns True: the loop always runs the step;
        a bad one is skipped inside :func:`optimizer_step`. (``optimizer`` is accepted for old callers.)"""
        loss = loss.detach()
        bad = ~torch.isfinite(loss)
        self._window_bad = self._window_bad | bad
        self._window_value = torch.where(bad, loss.double(), self._window_value)
        self._step, self.last_checkpoint = step, last_checkpoint if last_checkpoint is not None else self.last_checkpoint
        self._post()
        return True

    def verdict(self, grad_norm: torch.Tensor | None) -> torch.Tensor:
        """At an accumulation boundary: whether this optimizer step is bad (a non-finite loss in its window,
        or non-finite gradients), recorded on the device for the next settle point. Under fp16 the gradient
        scaler judges the gradients; only the losses count here."""
        bad = self._window_bad
        if grad_norm is not None and not self.fp16:
            bad = bad | ~torch.isfinite(grad_norm.detach())
        here = torch.stack([torch.full_like(self._count, self._step), self._window_bad.double(), self._window_value])  # no host copy
        self._count += bad
        self._first = torch.where(bad & (self._count == 1), here, self._first)
        self._last = torch.where(bad, here, self._last)
        self._window_bad = torch.zeros_like(self._window_bad)
        self.found = bad
        return bad

    def after_step(self, step: int) -> None:
        """After every loop step (``step`` already advanced): take the agreed signal/budget flags, and at a
        settle point read the bad-step tally (one host read), warning for a first skipped step and raising
        the UserError for one more than ``train.skip_nonfinite_once`` allows."""
        self._receive()
        if step % self.settle_every == 0 or step % self.checkpoint_every == 0 or step >= self.max_steps or self.stop_signal:
            self.settle()

    def settle(self) -> int:
        """Read the tally now (one device-to-host read; agreed over processes); returns the steps skipped."""
        tally = torch.cat([self._count.view(1), self._first, self._last])
        if self.multi:  # the count and steps by max; the 'here' flags and values stay this process's own
            agreed = self.accelerator.reduce(tally.clone(), "max")
            tally = torch.where(torch.tensor([True, True, False, False, True, False, False], device=tally.device), agreed, tally)
        count, first_step, first_here, first_value, last_step, last_here, last_value = tally.tolist()
        count = int(count)
        allowed = 1 if self.allow_skip else 0
        if count > self.skipped and self.skipped < allowed:
            seen = f"loss is {first_value}" if first_here else "the loss of another process is not finite"
            self.log(f"warning: {seen} at step {int(first_step)}; skipping this batch once (on every process)")
        self.skipped = count
        if count > allowed:
            seen = f"loss became {last_value}" if last_here else "the loss of another process became non-finite"
            where = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written yet"
            raise UserError(f"{seen} at step {int(last_step)} ({where}); lower train.lr, enable train.grad_clip, or check "
                            "the data, then --resume")
        return count

    def trained_steps(self, loop_steps: int) -> int:
        """Of ``loop_steps`` run in this session, how many trained (not skipped); settles first."""
        return loop_steps - self.settle() * self.grad_accumulation


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


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` (drawn or gathered on the CPU) on ``device`` without making the host wait: on CUDA through
    pinned memory, asynchronously (a copy from pageable memory waits for every kernel queued before it)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


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


def training_layout(module: torch.nn.Module, tc: TrainLoopConfig, device: torch.device | str) -> torch.nn.Module:
    """``module`` in the memory order ``train.channels_last`` asks for on ``device`` (``auto``: channels-last on
    CUDA only). Call it before the optimizer is made, so that Adam's moments take the same strides."""
    device = torch.device(device)
    on = device.type == "cuda" if tc.channels_last == "auto" else tc.channels_last
    return module.to(memory_format=torch.channels_last) if on else module


def adamw(parameters, tc: TrainLoopConfig, device: torch.device | str = "cpu", lr: float | None = None) -> torch.optim.AdamW:
    """The optimizer of every vqldm trainer: AdamW with the loop's lr, betas and weight decay, as the fused
    kernel on CPU and CUDA (one pass for all parameters instead of several per tensor: 3.7x faster than
    foreach for a 16M-parameter UNet on one CPU core, ``benchmarks/bench_train_step.py``; its step count
    stays on the device) -- and the one that skips a bad step on the device (``found_inf``, see
    :class:`StepGuard`). Other devices get the default implementation."""
    fused = torch.device(device).type in ("cuda", "cpu")
    return torch.optim.AdamW(parameters, lr=tc.lr if lr is None else lr, betas=tc.adam_betas,
                             weight_decay=tc.weight_decay, fused=fused or None)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _inner_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one


def optimizer_step(loss: torch.Tensor, optimizer, parameters, grad_clip: float | None, accelerator=None,
                   guard: StepGuard | None = None, skip: torch.Tensor | None = None) -> None:
    """Backward, clip the gradient norm where gradients are synchronised (the accumulation boundary),
    step and clear. Under accumulation accelerate's prepared optimizer skips the step between boundaries.
    Without an accelerator (a plain single-process loop) every call is a boundary.

    With ``guard`` the boundary's verdict (:meth:`StepGuard.verdict`: the window's losses and the gradient
    norm) decides on the device whether the fused AdamW applies the step; ``skip`` (a second optimizer in
    the same step, e.g. the discriminator's) skips it where the first step was skipped or its own gradients
    are not finite, without counting it again. No host read either way, except for a non-fused optimizer,
    which cannot skip on the device."""
    params = list(parameters)
    boundary = accelerator is None or accelerator.sync_gradients
    if accelerator is None:
        loss.backward()
    else:
        accelerator.backward(loss)
    if boundary and (guard is not None or skip is not None or grad_clip):
        if grad_clip:
            clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
            norm = clip(params, grad_clip)
        if not grad_clip or norm is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if guard is not None:
            bad = guard.verdict(norm)
        elif skip is not None:
            bad = skip | ~torch.isfinite(norm)
        else:
            bad = None
        inner = _inner_optimizer(optimizer)
        if bad is not None and not (guard is not None and guard.fp16):  # fp16: the gradient scaler sets found_inf
            if inner.defaults.get("fused"):
                inner.found_inf = bad.float()
            elif bool(bad):  # a non-fused optimizer: skip on the host (one read)
                optimizer.zero_grad(set_to_none=True)
                return
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
            match_parameter_layout(opt)

    _restoring(ckpt, load_all)
    torch.set_rng_state(files["rng"]["torch_cpu"])
    resumed = Resumed(int(state["step"]), float(state.get("train_seconds", 0.0)), ckpt, files, state)
    log(f"resumed from {ckpt} at step {resumed.step}")
    return resumed


def match_parameter_layout(opt: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor its parameter's strides. A checkpoint stores contiguous tensors;
    next to channels-last weights (``train.channels_last``) the fused AdamW kernel would pair the moments'
    elements with the wrong weights, and a resumed run would drift from an uninterrupted one."""
    for param, slots in opt.state.items():
        for key, value in slots.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                slots[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


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
