"""Fixtures shared across test folders."""

import contextlib
import os

import pytest

# torch, Lightning and the project are imported where a fixture or hook needs them: under
# pytest-xdist this module is imported by the process that only hands out the tests too, and
# before it starts the test processes (5 s of imports, all alone, on every run)


def pytest_configure(config):
    """Under pytest-xdist, each test process takes its share of the cores for torch's threads
    (not all of them each: 4 threads fighting over 2 cores made the suite slower)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 0))
    if workers:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


# session fixtures that train (seconds to tens of seconds): the tests of each go to one process,
# which trains once (and builds the module fixtures on top of `trained`, the exports, once)
TRAINING_FIXTURES = ("overfit_detector", "trained")


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the marks into the test ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in TRAINING_FIXTURES:
            if name in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(name))


@pytest.fixture(autouse=True)
def grouped_as_marked(request):
    """xdist's loadgroup sends a group's tests to one process by the `@<group>` it appends to
    their ids; where that no longer takes (pytest 9.2: pytest-dev/pytest-xdist#1386), every
    process would train the group's fixture again, silently: fail instead."""
    if request.config.getoption("loadgroup", False):
        marked = request.node.get_closest_marker("xdist_group")
        if marked and "@" not in request.node.nodeid:
            pytest.fail(
                "--dist loadgroup did not group this test: pytest-xdist no longer works with "
                "this pytest (see the pytest bound in pyproject.toml)"
            )


@pytest.fixture(scope="session", autouse=True)
def absl_logs_to_the_real_stderr(pytestconfig):
    """absl (which OpenVINO imports) makes its log handler when it is first imported, on the
    sys.stderr of that moment, and closes that stream when logging is reset (Hydra does at
    every run) unless it is sys.stderr then. Imported in a test, that stream was pytest's
    capture: a Hydra run later closed it, and every later test of the process failed ("I/O
    operation on closed file"). Imported here with capture off, absl keeps the real stderr."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled(), contextlib.suppress(ImportError):
        import absl.logging  # noqa: F401
    yield


@pytest.fixture(scope="session", autouse=True)
def no_sleep_after_a_shuffled_pass():
    """datasets sleeps 5 s at the end of every shuffled pass (a pyarrow thread-shutdown
    workaround): harmless once an epoch in training, minutes over the tests. For the whole
    session, so that module and session fixtures that train (the README's coco400 run) are
    spared it too. (The processes the tests start: by tests/processes/sitecustomize.py.)"""
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        # (datasets 3.0 has no such sleep, nor the setting)
        patch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0, raising=False)
        yield


@pytest.fixture(scope="session")
def overfit_detector():
    """`overfit(seed=0)`, trained once per test session."""
    from tests.helpers import overfit

    return overfit(seed=0)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A two-epoch run on synthetic data with checkpoints and TensorBoard logs, validated and
    checkpointed with the weights' moving average (a short one, for so short a run), at the
    default logging interval (10), which its 8 steps are too few for: they log every step."""
    from tests.app.helpers import TINY, run, run_dirs

    log_dir = tmp_path_factory.mktemp("logs")
    ema = ["ema=on", "ema.decay=0.8", "ema.warmup_steps=0"]
    train = ["trainer.max_epochs=2", "callbacks=inspection", *ema, *TINY, "report=auto"]
    train.remove("trainer.log_every_n_steps=1")
    run("train.py", *train, log_dir=log_dir)
    return log_dir, run_dirs(log_dir)[0]


@pytest.fixture
def only_matplotlibs_fonts(monkeypatch):
    """A machine with no fonts but matplotlib's own, whatever this one has installed (the
    font of class names depends on them); what a test changes in matplotlib's font settings,
    and the fonts chosen, are undone after it."""
    import matplotlib
    from matplotlib import font_manager

    from frcnn.visualization.fonts import font_for, names_font

    own = matplotlib.get_data_path()
    shipped = [e for e in font_manager.fontManager.ttflist if e.fname.startswith(own)]
    monkeypatch.setattr(font_manager.fontManager, "ttflist", shipped)
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *args, **kwargs: [])
    monkeypatch.setitem(matplotlib.rcParams, "font.family", matplotlib.rcParams["font.family"])
    for cache in (font_for, names_font):
        cache.cache_clear()
    yield monkeypatch
    for cache in (font_for, names_font):
        cache.cache_clear()


@pytest.fixture
def without_the_heic_extra(monkeypatch):
    """PIL as it is without the `heic` extra, whatever this environment has: no HEIF format
    registered, and the project's image suffixes asked again."""
    from PIL import Image

    from frcnn.data.sources import image_suffixes

    Image.init()
    monkeypatch.setattr(Image, "OPEN", {k: v for k, v in Image.OPEN.items() if k != "HEIF"})
    monkeypatch.setattr(Image, "ID", [name for name in Image.ID if name != "HEIF"])
    extensions = {k: v for k, v in Image.EXTENSION.items() if v != "HEIF"}
    monkeypatch.setattr(Image, "EXTENSION", extensions)
    image_suffixes.cache_clear()
    yield
    image_suffixes.cache_clear()
