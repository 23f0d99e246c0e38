"""Progress that suits a log file: when stderr is not a terminal (a batch scheduler, nohup), the training
loops print a plain line at a fixed interval instead of tqdm's carriage-return redraws."""

from __future__ import annotations

import io

from vqldm.cli.main import main
from vqldm.plumbing.runs import PlainProgress


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_prints_at_a_fixed_interval_and_at_the_end():
    clock, out = FakeClock(), io.StringIO()
    bar = PlainProgress(total=1000, initial=100, desc="train-diffusion", every=30.0, stream=out, clock=clock)
    for _ in range(250):  # 250 steps at 10 steps/s: 25 s, under the interval
        clock.now += 0.1
        bar.update(1)
    assert out.getvalue() == ""
    bar.set_postfix(loss="0.1234")
    for _ in range(100):
        clock.now += 0.1
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines == ["train-diffusion: step 400/1000 (40%), 10 steps/s, ETA 1m00s, loss 0.1234"]
    clock.now += 1.0
    bar.update(5)
    bar.close()
    bar.close()  # once only
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("train-diffusion: step 455/1000 (46%)") and "\r" not in out.getvalue()


def test_a_run_whose_stderr_is_a_file_writes_plain_lines(tiny_ae_run, tmp_path, capsys):
    """capsys' stderr is not a terminal, like a batch job's log file."""
    code = main(["train-diffusion", "--config", "tiny", "--autoencoder", str(tiny_ae_run), "--data", "fashion-mnist",
                 "--out", str(tmp_path / "run"), "--max-steps", "6", "--set", "train.progress=true",
                 "--set", "train.log_every=2", "--set", "train.image_every=100"])
    assert code == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line for line in err.splitlines() if line.startswith("train-diffusion: step")][-1].startswith(
        "train-diffusion: step 6/6 (100%)")
