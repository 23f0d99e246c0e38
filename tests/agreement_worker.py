"""One process of a 2-process ``vqldm train-diffusion`` run with a fault injected on one rank only, for
tests/test_agreement.py (not a test module itself):

    python tests/agreement_worker.py FAULT RANK STEP -- train-diffusion ARGS...

FAULT ``nan``: on process RANK the loss of step STEP is NaN; ``sigterm``: process RANK sends itself SIGTERM
as step STEP begins; ``none``: no fault. The other process sees nothing unusual: whatever it does, it
does because the processes agreed on it.
"""

import os
import signal
import sys

import vqldm.diffusion.train as train
from vqldm.cli.main import main

fault, fault_rank, fault_step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
assert sys.argv[4] == "--"
here = int(os.environ["RANK"]) == fault_rank
current = {"step": -1}
step_generator, diffusion_loss = train.step_generator, train.diffusion_loss


def step_generator_with_fault(seed, step, rank):
    current["step"] = step
    if fault == "sigterm" and here and step == fault_step:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives now; the loop notices at this step's agreement
    return step_generator(seed, step, rank)


def loss_with_fault(*args, **kwargs):
    loss = diffusion_loss(*args, **kwargs)
    if fault == "nan" and here and current["step"] == fault_step:
        return loss * float("nan")
    return loss


train.step_generator, train.diffusion_loss = step_generator_with_fault, loss_with_fault
sys.exit(main(sys.argv[5:]))
