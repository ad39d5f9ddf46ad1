import pytest

from tests.simulator._util import tiny_model


@pytest.fixture
def model():
    return tiny_model()
