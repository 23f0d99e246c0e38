"""``python -m vqldm ...`` runs the ``vqldm`` command line (also under ``torchrun`` / ``accelerate launch -m vqldm``)."""

import sys

from .cli.main import main

sys.exit(main())
