"""``rollgate up`` with the fake services (``fake_services.py``) in place of the real verifier and gateway."""

from __future__ import annotations

import sys

from rollgate.collector.stack._up import Launcher, up_main

_FAKES = [sys.executable, "-m", "tests.collector.fake_services"]

if __name__ == "__main__":
    launcher = Launcher(
        verifier=lambda target: [*_FAKES, "verifier", target],
        gateway=lambda config, host, port: [*_FAKES, "gateway", config, host, str(port)],
    )
    raise SystemExit(up_main(sys.argv[1:], launcher=launcher))
