"""Run ``cellnet run -c CONFIG`` with the wall clock shifted by SECONDS.

``python skewed_cell.py SECONDS CONFIG``: ``time.time`` and ``time.time_ns``
return the real time plus SECONDS in this process (its log timestamps show
it), as on a host whose clock is off. The monotonic clock is untouched, as
it is on such a host.
"""

from __future__ import annotations

import sys
import time

shift = float(sys.argv[1])
_real_time, _real_time_ns = time.time, time.time_ns
time.time = lambda: _real_time() + shift  # type: ignore[assignment]
time.time_ns = lambda: _real_time_ns() + int(shift * 1e9)  # type: ignore[assignment]

from cellnet.cli import main  # noqa: E402

sys.argv = ["cellnet", "run", "-v", "-c", sys.argv[2]]
main()
