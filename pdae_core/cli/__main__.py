"""``python -m pdae_core.cli``: the ``pdae`` command line (used under torchrun)."""

import sys

from . import main

sys.exit(main())
