import pytest
import torch
from threadpoolctl import threadpool_limits  # installed with scikit-learn


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Single-threaded torch and NumPy BLAS for the whole suite: the test problems are tiny, and
    on a shared 2-core machine extra BLAS threads only spin (seconds per call under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here); runs wherever a GPU exists")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A small trained RUN_DIR (MLP on 300 digits, 3 epochs, a checkpoint every epoch); treat as read-only."""
    from landscape.train.config import TrainConfig
    from landscape.train.trainer import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(model="mlp", model_params={"width": 16, "depth": 1}, train_size=300, epochs=3,
                      batch_size=64, lr=0.1, checkpoints="every:1")
    train(cfg, out, progress=False, device="cpu")
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the tiny run, for tests that write into it."""
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst
