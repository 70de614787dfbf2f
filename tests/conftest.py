import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # gradcheck.py and reference.py
os.environ.setdefault("MPLBACKEND", "Agg")
# Real MNIST for integration tests: ../shared/datasets beside the repository, unless set already.
_shared = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
if "CNNTRAIN_DATA" not in os.environ and _shared.is_dir():
    os.environ["CNNTRAIN_DATA"] = str(_shared)
