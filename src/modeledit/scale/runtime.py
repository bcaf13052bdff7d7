"""The Ray runtime and the workers: start or join it, start workers that each load the model once, turn
what goes wrong on them into one clear error.

``workers(lm, n, address)`` is a context manager: it joins the cluster at ``address``, uses a runtime this
process started already, or starts a local one (``n`` workers, the CPU cores shared out among them), and
starts the workers; on exit it ends the workers and the runtime it started. A worker that dies (``kill -9``,
a lost node) is restarted by Ray and its task run again (``retries`` times); after that, or when a worker
raises, the error says what happened.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from modeledit.errors import ModelEditError, ScaleError

log = logging.getLogger(__name__)

INSTALL = "pip install 'modeledit[scale]'"
ENV = ("MODELEDIT_CACHE", "MODELEDIT_DATA", "HF_HOME", "HF_HUB_OFFLINE")  # what workers must see as this process does


def import_ray():
    """The ``ray`` module, or one clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ScaleError(f"spreading work over workers (--workers, --ray-address) needs Ray, an optional extra: {INSTALL}") from None
    return ray


def check_workers(workers: int | None, address: str | None, *, sequential: bool = False) -> bool:
    """Whether work is to be spread at all, checked before any work: a bad count, workers asked for a
    sequential evaluation, or Ray missing is one clear error."""
    from modeledit.errors import RequestError

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise RequestError("workers", f"must be a positive number of workers, got {workers!r}")
    spread = workers is not None or bool(address)
    if spread and sequential:
        raise RequestError("workers", "sequential evaluation is single-process: each batch is edited on the model holding "
                                      "the ones before, so batches cannot be spread over workers; drop --workers / --ray-address")
    if spread:
        import_ray()
    return spread


def model_spec(lm: Any) -> dict[str, Any]:
    """How a worker loads the same model: ``load_model``'s arguments as the driver gave them."""
    if getattr(lm, "load_args", None) is None:
        raise ScaleError(
            f"the model {lm.name!r} was built in memory, and workers load the model themselves, by name or path: save it "
            "(lm.model.save_pretrained(DIR); lm.tokenizer.save_pretrained(DIR)) and load it with load_model(DIR)"
        )
    spec = dict(lm.load_args)
    if spec["device"] not in (None, "cpu"):
        spec["device"] = None  # an accelerator: the worker's own (Ray gives each worker its GPU)
    return spec


@dataclass
class Workers:
    """Started workers (Ray actor handles) and their process ids (as first started)."""

    ray: Any
    actors: list[Any]
    pids: list[int]

    def pool(self):
        from ray.util import ActorPool

        return ActorPool(list(self.actors))


@contextmanager
def workers(lm: Any, n: int | None = None, address: str | None = None, *, most: int | None = None, retries: int = 1,
            cpus: float | None = None, gpus: float | None = None, threads: int | None = None) -> Iterator[Workers]:
    """``n`` workers (default: one per CPU of the cluster; never more than ``most``, the pieces of work),
    each holding ``lm`` loaded as the driver loaded it and checked to have the same weights.
    ``cpus``/``gpus``: per worker (default: a local runtime's cores shared out, 1 on a cluster; a GPU each
    when the driver's model is on one). ``threads``: each worker's torch threads (default: this process's,
    whatever share of the cores Ray gives it: a matmul's result depends on how many threads split it —
    1.7e-6 apart in float32, 0.9% in bfloat16 for one ROME edit of SmolLM2 on 1 and 2 threads — so only
    then are the workers' numbers this process's, bit for bit)."""
    n = min(n, most) if n and most else n
    ray = import_ray()
    spec = model_spec(lm)
    started = False
    if not ray.is_initialized():
        local = not address
        count = n or (os.cpu_count() or 1)
        share = cpus or (max(1, (os.cpu_count() or 1) // count) if local else 1)
        try:
            if local:
                ray.init(num_cpus=int(share * count), include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError ... for an unreachable cluster
            raise ScaleError(f"could not {'start a local Ray runtime' if local else f'join the Ray cluster at {address}'}: {exc}") from exc
        started = True
    else:
        share = cpus or 1
    actors: list[Any] = []
    try:
        total = ray.cluster_resources()
        on_gpu = lm.device.type != "cpu"
        room = int(total.get("GPU", 0)) if on_gpu and total.get("GPU") else int(total.get("CPU", 1) // share)
        count = n or max(1, min(room, most or 1 << 30))  # default: a worker per GPU (model on one) or per CPU
        gpu_share = gpus if gpus is not None else (min(1.0, total.get("GPU", 0) / count) if on_gpu else 0)
        env = {k: os.environ[k] for k in ENV if k in os.environ}
        from modeledit.scale.worker import Worker

        remote = ray.remote(Worker).options(num_cpus=share, num_gpus=gpu_share, max_restarts=retries, max_task_retries=retries,
                                            runtime_env={"env_vars": env} if env else None)
        import torch

        actors = [remote.remote(spec, lm.identity, threads or torch.get_num_threads()) for _ in range(count)]
        with worker_errors():  # also what goes wrong while the caller uses them
            pids = ray.get([a.pid.remote() for a in actors])  # each has loaded the model (or says why not)
            log.info("%d workers ready (processes %s)", count, pids)
            yield Workers(ray, actors, pids)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()


@contextmanager
def worker_errors() -> Iterator[None]:
    """A worker's own error raised here as it is; a dead worker, or anything else from Ray, as a ScaleError."""
    ray = import_ray()
    try:
        yield
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ModelEditError):
            raise cause from None
        raise ScaleError(f"a worker failed: {type(cause).__name__ if cause else 'error'}: {cause or exc}") from exc
    except ray.exceptions.RayActorError as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ScaleError(
            f"a worker died and was not brought back ({first}); what was finished is kept: run the same command again to resume"
        ) from exc
    except ray.exceptions.RayError as exc:  # out of memory, lost objects, ...
        raise ScaleError(f"Ray could not finish the work ({type(exc).__name__}: {str(exc).strip()[:300]}); what was finished "
                         "is kept: run the same command again to resume") from exc
