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
