"""Spreading work over Ray workers — on one machine (a local runtime) or a cluster — for the three kinds of
work that split into independent pieces: the evaluation loop's batches (``evaluate.RayRecords``), the
corpus pass of the key statistics (``moments.RayMoments``) and the tracing of many facts
(``trace.RayTraces``). Each plugs into its one-process loop through one argument (``compute`` /
``collect``); the loop's own process alone writes the results, so runs stay resumable.

Ray is an optional extra (``pip install 'modeledit[scale]'``); nothing here imports it until used.
"""

from modeledit.scale.evaluate import RayRecords
from modeledit.scale.moments import RayMoments
from modeledit.scale.runtime import check_workers, import_ray
from modeledit.scale.trace import RayTraces

__all__ = ["RayMoments", "RayRecords", "RayTraces", "check_workers", "import_ray"]
