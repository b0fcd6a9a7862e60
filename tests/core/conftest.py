"""Fixtures of the core tests."""
import pytest

from drconv import cpu_kernels


@pytest.fixture(autouse=True)
def kernels_on_all_threads(monkeypatch):
    """The CPU kernels run on torch's threads however small the call: the tests' small shapes
    would otherwise run each kernel on one thread (cpu_kernels.threads_for), and the work items'
    split between threads would go untested."""
    monkeypatch.setattr(cpu_kernels, 'SERIAL_WORK', 0)
