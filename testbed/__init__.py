"""The two-host test bed: real network namespaces, real LXC, real CRIU.

Used by the integration tests, the demo and the benchmarks, and by hand
through ``scripts/testbed`` (see docs/testbed.md). It is not installed with
lxdmig: it runs from the checkout, and starts its children with
``python -m testbed...``, so its importer puts the checkout on PYTHONPATH
for them, whatever their working directory.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
