"""Worker preload: ``dask worker --preload daskcal.preload``.

Importing this module imports the modules daskcal's tasks use, of both stages
(:data:`daskcal.cluster.DETECTOR_TASK_MODULES`, :data:`daskcal.cluster.IMAGE_TASK_MODULES`), with
asdf's extensions loaded, numba's compiler set up and a closing worker's heartbeat error quieted
(:mod:`daskcal._worker_logs`): what the workers of daskcal's embedded cluster start with. A worker
you start yourself (``dask worker``, Dask's ``distributed.worker.preload`` setting, a dask-jobqueue
job) then pays them when it starts
instead of in its first tasks (asdf's extensions alone: 0.7-1.0 s of CPU in the first task
that reads a WCS).
"""

import importlib

from daskcal.cluster import DETECTOR_TASK_MODULES, IMAGE_TASK_MODULES

_FIRST = ("daskcal._numba_ready", "daskcal._worker_logs")
for _name in dict.fromkeys((*_FIRST, *DETECTOR_TASK_MODULES, *IMAGE_TASK_MODULES)):
    importlib.import_module(_name)
