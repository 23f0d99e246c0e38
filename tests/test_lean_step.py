"""The lean training step (issue 21): no device-to-host read on the hot path of any trainer, and a bad
step skipped on the device exactly as a skipped step (weights, Adam moments and step count, EMA).

A host read is what ``.item()``, ``float(t)``, ``bool(t)`` and ``int(t)`` dispatch to
(``aten::_local_scalar_dense``), and an op whose output size depends on device data (``nonzero``, which a
boolean index calls, and ``masked_select``). On a CPU they
cost little, but the same code on a GPU would wait for every launched kernel each time; counting them on
the CPU is how the suite keeps the GPU path lean.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vqldm.cli.main import main
from vqldm.plumbing.ema import EMA
from vqldm.plumbing.trainkit import LossWindow, StepGuard, StopSignals, TrainClock, TrainLoopConfig, adamw, optimizer_step

QUIET = ["--set", "train.progress=false", "--set", "train.log_every=1000000", "--set", "train.image_every=1000000",
         "--set", "train.checkpoint_every=1000000"]


# ops whose result on the host depends on a device value: a scalar read, or an output whose size is data
# (``x[mask]`` with a boolean mask calls nonzero)
HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default}
BOOL_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default}


class CountHostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS or (func in BOOL_INDEXING and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []))):
            self.count += 1
        return func(*args, **(kwargs or {}))


def host_reads(argv: list[str]) -> int:
    counter = CountHostReads()
    with counter:
        assert main(argv) == 0
    return counter.count


def per_step_reads(make_argv, short: int = 3, long: int = 8) -> float:
    """(reads of a long run - reads of a short run) / steps between: set-up, the last log and export cancel."""
    return (host_reads(make_argv(long, "long")) - host_reads(make_argv(short, "short"))) / (long - short)


def test_the_latent_diffusion_step_reads_nothing_back(tiny_ae_run, tmp_path):
    def argv(steps, name):
        return ["train-diffusion", "--config", "tiny", "--autoencoder", str(tiny_ae_run), "--data", "fashion-mnist",
                "--out", str(tmp_path / name), "--max-steps", str(steps), "--set", "data.max_images=64",
                "--set", "cache.holdout_max_images=16", "--set", "train.num_sample_images=2", "--set", "train.sample_steps=2",
                *QUIET]

    assert per_step_reads(argv) == 0


@pytest.mark.slow
def test_the_prior_step_reads_nothing_back(tiny_ae_run, tmp_path):
    def argv(steps, name):
        return ["train-prior", "--kind", "masked", "--config", "tiny", "--autoencoder", str(tiny_ae_run), "--data",
                "fashion-mnist", "--out", str(tmp_path / name), "--max-steps", str(steps), "--set", "data.max_images=64",
                "--set", "cache.holdout_max_images=16", "--set", "train.num_sample_images=2", *QUIET]

    assert per_step_reads(argv) == 0


def test_the_autoencoder_step_reads_nothing_back_between_restarts(tmp_path):
    # Dead-code restarts (every quantizer.restart_every steps) and the usage line (once an epoch) read once
    # each, not per step: here both lie beyond the run (512 images are more than 8 batches)
    def argv(steps, name):
        return ["train-autoencoder", "--config", "tiny", "--data", "fashion-mnist", "--out", str(tmp_path / name),
                "--max-steps", str(steps), "--set", "data.max_images=512", "--set", "train.eval_max_images=8",
                "--set", "quantizer.restart_every=1000", *QUIET]

    assert per_step_reads(argv) == 0


# ----------------------------------------------------------------------------- skipping on the device
def tiny_loop(allow_skip: bool = True):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    tc = TrainLoopConfig(max_steps=100, batch_size=2, lr=0.1, grad_clip=None, log_every=10, checkpoint_every=100,
                         skip_nonfinite_once=allow_skip, weight_decay=0.0)
    opt = adamw(model.parameters(), tc, "cpu")
    said: list[str] = []
    guard = StepGuard(tc, StopSignals(), TrainClock(), log=said.append)
    return model, opt, guard, said


def one_step(model, opt, guard, step, bad: bool, ema: EMA | None = None):
    x = torch.ones(2, 4)
    loss = model(x).pow(2).mean()
    if bad:
        loss = loss * float("nan")
    guard.check(loss, step)
    optimizer_step(loss, opt, model.parameters(), None, guard=guard)
    if ema is not None:
        ema.update(model, skip=guard.found)
    guard.after_step(step + 1)
    return loss


def state_of(model, opt, ema=None):
    tensors = {f"p{i}": p.detach().clone() for i, p in enumerate(model.parameters())}
    for i, p in enumerate(model.parameters()):
        for key, value in opt.state[p].items():
            tensors[f"opt{i}.{key}"] = value.detach().clone()
    if ema is not None:
        tensors.update({f"ema{i}": p.detach().clone() for i, p in enumerate(ema.model.parameters())})
    return tensors


def test_a_bad_step_changes_nothing_and_the_next_good_step_trains():
    model, opt, guard, said = tiny_loop()
    ema = EMA(model, decay=0.5, warmup=False)
    for step in range(2):
        one_step(model, opt, guard, step, bad=False, ema=ema)
    before = state_of(model, opt, ema)
    one_step(model, opt, guard, 2, bad=True, ema=ema)  # skipped on the device
    after = state_of(model, opt, ema)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key  # weights, exp_avg(_sq), step count, EMA
    one_step(model, opt, guard, 3, bad=False, ema=ema)
    assert not torch.equal(state_of(model, opt)["p0"], before["p0"])
    assert said == []  # the host hears of it at the next settle point (step 10), not at once
    for step in range(4, 10):
        one_step(model, opt, guard, step, bad=False)
    assert said == ["warning: loss is nan at step 2; skipping this batch once (on every process)"]
    assert guard.skipped == 1 and guard.trained_steps(10) == 9


def test_skipping_matches_a_loop_that_never_saw_the_bad_batch():
    a, opt_a, guard_a, _ = tiny_loop()
    b, opt_b, guard_b, _ = tiny_loop()
    for step in range(5):
        one_step(a, opt_a, guard_a, step, bad=(step == 2))
    for step in range(4):  # the same four good steps
        one_step(b, opt_b, guard_b, step, bad=False)
    sa, sb = state_of(a, opt_a), state_of(b, opt_b)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_a_second_bad_step_raises_at_the_settle_point_naming_its_step():
    from vqldm.plumbing.errors import UserError

    model, opt, guard, said = tiny_loop()
    with pytest.raises(UserError, match=r"loss became nan at step 6 \(no checkpoint was written yet\)"):
        for step in range(20):
            one_step(model, opt, guard, step, bad=step in (2, 6))
    assert step == 9  # the error came at the settle point after step 9 (log_every 10)
    assert said and "at step 2" in said[0]


def test_without_skipping_the_first_bad_step_raises():
    from vqldm.plumbing.errors import UserError

    model, opt, guard, said = tiny_loop(allow_skip=False)
    with pytest.raises(UserError, match="loss became nan at step 1"):
        for step in range(10):
            one_step(model, opt, guard, step, bad=step == 1)
    assert said == []


def test_loss_window_leaves_a_skipped_steps_loss_out():
    class OneProcess:
        device = torch.device("cpu")

        @staticmethod
        def reduce(t, op):
            return t

    window = LossWindow()
    for value in (1.0, float("nan"), 3.0):
        window.add(torch.tensor(value), other=torch.tensor(2 * value))
    means = window.means(OneProcess())
    assert means == {"loss": 2.0, "other": 4.0}


def test_counting_the_reads_sees_a_read():  # the counter the tests above rely on can fail
    counter = CountHostReads()
    with counter:
        float(torch.ones(()) * 2)
        bool(torch.zeros(()).any())
        torch.arange(4)[torch.arange(4) > 1]
    assert counter.count == 3
