import os
import resource
import signal
from collections.abc import Callable

import pytest

from mokit import data

# The test session runs on the CPU: fixture data is built on the CPU, and a model that pick_device()
# would put on a GPU would meet it there. A user who sets MOKIT_DEVICE (e.g. cuda, to test a GPU)
# keeps it. Set at import, before any test module is collected; spawned workers and papermill
# kernels inherit it.
USER_DEVICE = os.environ.get("MOKIT_DEVICE")
os.environ.setdefault("MOKIT_DEVICE", "cpu")

# Under pytest-xdist every worker (and every papermill kernel it starts) gets its share of the cores as
# torch / OpenMP threads: two workers each running two threads on two cores fight (OpenMP spin-waits),
# which made the notebook smoke runs about 30% slower (measured: 02 and 03 side by side, 99 s against 69 s).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """The browser test last: by then the notebooks' data caches and smoke checkpoints exist."""
    items.sort(key=lambda item: item.path.name == "test_browser.py")


@pytest.fixture(scope="session", autouse=True)
def _isolated_runs(tmp_path_factory):
    """Tests record results into a temp folder, never into the user's runs/."""
    os.environ["MOKIT_RUNS"] = str(tmp_path_factory.mktemp("runs"))
    os.environ["MOKIT_PROGRESS"] = "0"
    yield


@pytest.fixture(scope="session")
def user_device():
    """MOKIT_DEVICE as the user set it before the session (None: unset, so the session pins the CPU)."""
    return USER_DEVICE


@pytest.fixture
def standin(monkeypatch):
    """Force the generated stand-in datasets."""
    monkeypatch.setenv("MOKIT_STANDIN", "1")


@pytest.fixture(scope="session")
def standin_mnist():
    """(train, test) = 1000 and 500 examples of the generated MNIST stand-in: fast, needs no files."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOKIT_STANDIN", "1")
        return data.load_dataset("mnist", "train", subset=1000), data.load_dataset("mnist", "test", subset=500)


# --- bad-input tests: a hang or a runaway allocation fails the test instead of the machine ----------

class CallTimeout(BaseException):
    """A call ran past its time limit (not an Exception: nothing inside mokit may swallow it)."""


MEMORY_HEADROOM = 3 * 2 ** 30   # a call may map this much more address space; beyond it, MemoryError


def _address_space() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def within(seconds: float, fn: Callable):
    """fn() under a time limit (SIGALRM -> CallTimeout: a hang fails the test instead of blocking it)
    and an address-space cap (RLIMIT_AS: a call that tries to build a list of 10**18 items fails with
    MemoryError instead of taking the machine)."""
    def _alarm(*_):
        raise CallTimeout(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, old)
