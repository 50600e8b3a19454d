"""``python -m rollgate.verifier serve TARGET`` (= ``rollgate verifier serve TARGET``)."""

from __future__ import annotations

import sys

from rollgate.verifier._server import main

if __name__ == "__main__":
    sys.exit(main())
