"""``python -m cellnet.benchmarks``: the transport benchmark harness (see :mod:`.harness`)."""

import sys

from .harness import main

sys.exit(main())
