"""``python -m rollgate.gateway …`` (= ``rollgate gateway …``): see ``rollgate.gateway._main``."""

from __future__ import annotations

import sys

from rollgate.gateway._main import main

sys.exit(main())
