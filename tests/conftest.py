import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))


@pytest.fixture(scope="session")
def cfg():
    from device.contract.config import load_config

    return load_config()


@pytest.fixture(scope="session")
def headphone():
    from simulator.plant import Plant

    return Plant.load("headphone")


@pytest.fixture(scope="session")
def headphone_estimate(cfg, headphone):
    from simulator.run import identify_plant

    secondary, _ = identify_plant(cfg, headphone, seed=0)
    return secondary.estimate
