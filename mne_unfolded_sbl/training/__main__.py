"""``python -m mne_unfolded_sbl.training ...`` (also under ``torchrun -m``)."""

import sys

from .cli import main

sys.exit(main())
