import pytest

from .broker import Broker, Pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path, pki):
    broker = Broker(tmp_path / "broker", pki)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()  # never leave a mosquitto behind


@pytest.fixture(scope="session")
def thing(pki):
    cert, key = pki.issue("thing-1")
    return {"name": "thing-1", "cert": cert, "key": key}


# Tighter limits than the suite's 300 s for the outbox and the agent: a spool that never empties
# or an agent that never exits fails its test by name. The slowest of these (the broker kill and
# the agent SIGKILL) take about 20 s alone; the limits leave room for a loaded machine.
SPOOL_TIMEOUT_S = 60
CLOUD_TIMEOUT_S = 180


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.path.as_posix()
        if "/tests/cloud/" not in path or item.get_closest_marker("timeout") is not None:
            continue
        item.add_marker(pytest.mark.timeout(SPOOL_TIMEOUT_S if path.endswith("/test_spool.py") else CLOUD_TIMEOUT_S))
