"""Imported at the start of every Python process the tests start (`helpers.process_env` puts this
folder on PYTHONPATH): what tests/conftest.py does in the test processes, done in theirs too.

datasets sleeps 5 s at the end of every pass over parquet files (a pyarrow thread-shutdown
workaround): once an epoch in a real run, a third of a DDP test's time. The setting is changed
when `datasets.config` is first imported, not here: a process that never reads a data set would
pay that import (0.7 s) for nothing."""

import importlib.abc
import importlib.util
import sys


class NoSleepAfterAPass(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "datasets.config":
            return None
        sys.meta_path.remove(self)  # find the module as Python would without this finder
        spec = importlib.util.find_spec(name)
        if spec is None:  # not installed: the import fails as it would without this finder
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            module.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0  # (datasets 3.0: no such sleep, no harm)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, NoSleepAfterAPass())
