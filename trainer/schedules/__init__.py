"""The heart: the LR of every update. Importing this package registers every schedule.

``registry`` holds the name -> pure function table and binds a config to a run, ``formulas`` the
registered functions, ``chain`` schedules run one after another, ``schedule`` the bound
:class:`Schedule` and how it is applied to an optimizer, ``curve`` the LR of every update as
``lr.csv``/``lr.png``, and ``torch_adapter`` the schedules as a torch LR scheduler.
No module here imports torch at import time: ``--help`` reads this package's names.
"""

from trainer.schedules import chain, formulas  # noqa: F401  (registration)
from trainer.schedules.registry import COMMON, build_schedule, register, schedule_names, schedule_params
from trainer.schedules.schedule import Schedule

__all__ = ["COMMON", "Schedule", "build_schedule", "register", "schedule_names", "schedule_params"]
