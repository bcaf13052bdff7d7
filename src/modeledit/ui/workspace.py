"""What one app holds (``Workspace``): the offered models, loaded on first use and once, one lock per
model, a memo of completions, the upload limits and a scratch directory removed on close."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from modeledit.errors import ModelEditError, RequestError
from modeledit.ui.session import Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_upload_mb: int = 64  # every upload (patch files, images), enforced by the server
    max_image_side: int = 256  # pixels: larger images are refused with a message


class Workspace:
    """Everything one app holds: the offered models (loaded lazily, once), one lock per model, the
    classifier and diffusion models, the upload limits, and a scratch directory removed on close."""

    def __init__(self, models: Sequence[str] = (), *, classifier: str | None = None, diffusion: str | None = None,
                 limits: Limits = Limits()):
        from modeledit.llm.packaged import PACKAGED

        self.models = list(dict.fromkeys([*models, *PACKAGED]))
        self.classifier_path = classifier
        self.diffusion_name = diffusion
        self.limits = limits
        self.scratch = Path(tempfile.mkdtemp(prefix="modeledit-ui-"))
        self._loaded: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._loading = threading.Lock()  # one load at a time (models are large)
        self._guard = threading.Lock()  # guards the dict of locks and the memo
        self._memo: OrderedDict[tuple, Any] = OrderedDict()  # completions by (model, edits held, prompt, tokens)

    @property
    def default_model(self) -> str:
        return self.models[0]

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def cached(self, key: str, load: Callable[[], Any], job: Job | None, what: str) -> Any:
        if key in self._loaded:
            return self._loaded[key]
        if job is not None:
            job.say(f"loading {what} ...")
        with self._loading:
            if key not in self._loaded:
                t0 = time.perf_counter()
                self._loaded[key] = load()
                log.info("loaded %s in %.1f s", what, time.perf_counter() - t0)
        return self._loaded[key]

    def recall(self, key: tuple) -> Any:
        """A remembered result (completions of the model holding a given list of edits), or None."""
        with self._guard:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
        return None

    def remember(self, key: tuple, value: Any, capacity: int = 256) -> Any:
        with self._guard:
            self._memo[key] = value
            while len(self._memo) > capacity:
                self._memo.popitem(last=False)
        return value

    @contextmanager
    def using(self, key: str, job: Job | None) -> Iterator[None]:
        """Hold ``key``'s lock (waiting, cancellably, while another request holds it)."""
        lock = self.lock(key)
        said = False
        while not lock.acquire(timeout=0.25):
            if job is not None:
                if not said:
                    job.say("waiting: another request is using the model")
                    said = True
                job.check()
        try:
            yield
        finally:
            lock.release()

    # -- the models ---------------------------------------------------------------------------------
    def language_model(self, name: str, job: Job | None = None):
        if name not in self.models:
            raise RequestError("model", f"{name!r} is not offered by this page: choose one of {', '.join(self.models)} "
                                        "(start `modeledit ui --model PATH` to offer another)")

        def load():
            from transformers.utils import logging as hf_logging

            from modeledit.api import load_model

            hf_logging.disable_progress_bar()
            return load_model(name)

        return self.cached(f"lm:{name}", load, job, name)

    def diffusion(self, job: Job | None = None):
        def load():
            from diffusers.utils import logging as df_logging

            from modeledit.api import load_diffusion

            df_logging.disable_progress_bar()
            return load_diffusion(self.diffusion_name)

        return self.cached("diffusion", load, job, self.diffusion_name or "the embedded diffusion model")

    def classifier(self, job: Job | None = None):
        def load():
            from modeledit.api import load_judge
            from modeledit.classifier.model import load_classifier

            return load_classifier(self.classifier_path) if self.classifier_path else load_judge()

        return self.cached("classifier", load, job, self.classifier_path or "the Fashion-MNIST classifier")

    def judge(self, job: Job | None = None):
        from modeledit.api import load_judge

        return self.cached("judge", load_judge, job, "the judge classifier")

    def image_data(self, name: str, job: Job | None = None):
        from modeledit.images import load_data

        return self.cached(f"data:{name}", lambda: load_data(name), job, f"the {name} images")

    def warm(self, name: str | None = None) -> threading.Thread:
        """Load the default model (and ROME's cached statistics) in the background, so that the first
        edit does not wait for it; the page is up meanwhile."""
        def run():
            try:
                lm = self.language_model(name or self.default_model)
                with self.using(f"lm:{name or self.default_model}", None):
                    from modeledit.methods import get_method

                    get_method("rome").prepare(lm)
            except ModelEditError as exc:  # shown again, as a message, when the page asks for the model
                log.warning("could not load %s: %s", name or self.default_model, exc)
            except Exception:  # noqa: BLE001  (a background warm-up must never take the server down)
                log.exception("warming up %s failed", name or self.default_model)

        t = threading.Thread(target=run, name="modeledit-ui-warm", daemon=True)
        t.start()
        return t
