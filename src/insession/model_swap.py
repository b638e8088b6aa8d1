"""Model hot swap: a new trained model version served without a restart or a dropped request.

``ModelSwap.swap(path=...)`` loads a model directory (``insession train --out DIR``) off the
request path, applies the catalog changes made while serving (items joined or changed: the same
list, so the new line's version is ``<trained>+<hash of the changes>`` as for the old), and then
switches the engine to it in one step under the engine's lock: a request in flight finishes on
the model it started with, the next one starts on the new model. ``swap(version=...)`` switches
back to a version loaded before (the previous one: ``swap(version="previous")``) without loading
anything. Every manifest records the model version that served its list, and the versions loaded
in this process are kept (``model_for``), so ``explain`` recomputes a list with the model that
served it, before or after a swap.

The active version and its directory are recorded in the feature store (namespace ``catalog``,
key ``active_model``): in the snapshot of the embedded store, so a restart serves the version
last made active, and on Redis shared, so every server switches: each reads the record at most
once a second (``poll``, one small ``MGET`` on the request path) and loads a version it is not
serving on a background thread. On Redis the model directories must be readable by every server
at the same path (a shared volume), as the ``--model`` directory is.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from insession.config import Settings
from insession.errors import FieldError, ModelError, NotFound, ValidationError
from insession.log.items import ItemLog
from insession.model import ModelBundle
from insession.online.factors import OnlineFactors, for_model
from insession.pipeline import Recommender
from insession.store import FeatureStore

logger = logging.getLogger(__name__)
NAMESPACE = "catalog"
ACTIVE_KEY = "active_model"
TTL_S = 10 * 365 * 24 * 3600
#: How often a server reads the active version recorded in the store (seconds).
POLL_S = 1.0
#: Models kept loaded besides the active one (the oldest loaded is dropped first).
KEEP = 3


def trained_version(version: str) -> str:
    """The trained model a served version belongs to (``<trained>+<changes>`` → ``<trained>``)."""
    return version.split("+", 1)[0]


class Adopter(Protocol):
    """What the swap replaces in the engine, under the engine's lock."""

    _lock: threading.Lock
    settings: Settings
    model: ModelBundle
    recommender: Recommender
    factors: OnlineFactors | None


class ModelSwap:
    def __init__(
        self,
        engine: Adopter,
        store: FeatureStore,
        items: ItemLog,
        model_dir: Path | None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.store = store
        self.items = items
        self._monotonic = monotonic
        base = trained_version(engine.model.version)
        #: Trained version -> (the latest model of its line, its directory), in load order.
        self.loaded: dict[str, tuple[ModelBundle, Path | None]] = {base: (engine.model, model_dir)}
        #: The trained versions made active, oldest first (``previous`` is the one before the last).
        self.history: list[str] = [base]
        self.swaps = 0
        self._swap_lock = threading.Lock()  # one swap at a time (loading takes seconds)
        self._polled = float("-inf")
        self._loading: threading.Thread | None = None

    @property
    def active(self) -> str:
        return trained_version(self.engine.model.version)

    def directory(self, version: str) -> Path | None:
        found = self.loaded.get(trained_version(version))
        return found[1] if found is not None else None

    def model_for(self, version: str) -> ModelBundle | None:
        """The model (line) that served ``version``, if loaded in this process."""
        base = trained_version(version)
        if base == self.active:
            return self.engine.model
        found = self.loaded.get(base)
        return found[0] if found is not None else None

    def status(self) -> dict[str, Any]:
        return {
            "active": self.engine.model.version,
            "trained_version": self.active,
            "directory": str(self.directory(self.active) or ""),
            "loaded": list(self.loaded),
            "history": list(self.history),
            "swaps": self.swaps,
        }

    # -- the swap ---------------------------------------------------------------------------------
    def swap(self, path: Path | None = None, version: str | None = None, record: bool = True) -> dict[str, Any]:
        """Serve the model at ``path``, or the loaded ``version`` (``"previous"``: the one active
        before the current). Returns ``status()``. Refuses (422) a directory that holds no valid
        model and (404) a version not loaded here."""
        with self._swap_lock:
            model, directory = self._target(path, version)
            changes = self.items.read()  # the catalog changes made while serving apply to every line
            model = model.with_items(changes) if changes else model
            # Built before the switch (the ranker, the indexes): requests are served meanwhile.
            settings = self.engine.settings
            recommender = Recommender(model, settings.surfaces, settings.session.timeout_ms)
            with self.engine._lock:
                old = self.engine.model
                self.loaded[trained_version(old.version)] = (old, self.directory(old.version))
                self.engine.model, self.engine.recommender = model, recommender
                # The online factor model belongs to a trained model: it starts again from the new
                # one's vectors (off by default; see docs/operations.md).
                self.engine.factors = for_model(model)
                base = trained_version(model.version)
                self.loaded.pop(base, None)
                self.loaded[base] = (model, directory)
                while len(self.loaded) > KEEP + 1:
                    del self.loaded[next(iter(self.loaded))]
                if not self.history or self.history[-1] != base:
                    self.history.append(base)
                self.swaps += 1
            logger.info("model: now serving %s (was %s) from %s", model.version, old.version, directory)
            if record:
                value = json.dumps({"version": base, "path": str(directory) if directory else None}).encode()
                self.store.put_many(NAMESPACE, {ACTIVE_KEY: value}, TTL_S)
            return self.status()

    def _target(self, path: Path | None, version: str | None) -> tuple[ModelBundle, Path | None]:
        if path is not None:
            try:
                model = ModelBundle.load(path)
            except (ModelError, OSError, ValueError) as exc:
                why = exc.message if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
                expected = "a model directory (insession train --out DIR)"
                raise ValidationError([FieldError("path", expected, why)]) from None
            return model, path
        if version == "previous":
            earlier = [v for v in reversed(self.history[:-1]) if v != self.active and v in self.loaded]
            if not earlier:
                raise NotFound("version: no previous model version is loaded in this server")
            version = earlier[0]
        found = self.loaded.get(trained_version(version or ""))
        if found is None:
            raise NotFound(f"version: {version!r} is not loaded here (loaded: {', '.join(self.loaded)}); give its path")
        base = found[0].base or found[0]
        return base, found[1]

    # -- following the recorded version (restarts; every server on Redis) --------------------------
    def recorded(self) -> tuple[str, Path | None] | None:
        raw = self.store.get_many(NAMESPACE, [ACTIVE_KEY])[0]
        if raw is None:
            return None
        doc = json.loads(raw)
        return str(doc["version"]), Path(doc["path"]) if doc.get("path") else None

    def follow(self) -> None:
        """Serve the version recorded in the store if it is not the one served (at start)."""
        found = self.recorded()
        if found is None or found[0] == self.active:
            return
        version, path = found
        try:
            if version in self.loaded:
                self.swap(version=version, record=False)
            elif path is not None:
                self.swap(path=path, record=False)
        except (ValidationError, NotFound) as exc:
            logger.error("model: cannot serve the recorded version %s from %s: %s", version, path, exc.message)

    def poll(self) -> None:
        """At most once per ``POLL_S``: if the store records another version, load it on a
        background thread (the requests meanwhile are served by the current model)."""
        now = self._monotonic()
        if now - self._polled < POLL_S:
            return
        self._polled = now
        found = self.recorded()
        busy = self._loading is not None and self._loading.is_alive()
        if found is None or found[0] == self.active or busy:
            return
        self._loading = threading.Thread(target=self.follow, name="insession-model-swap", daemon=True)
        self._loading.start()
