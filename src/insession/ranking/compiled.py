"""The learned ranker compiled to native code with lleaves (``pip install 'insession[fast]'``).

lleaves turns a LightGBM model into machine code through LLVM. Compiled with one block of trees
(``fblocksize`` = the number of trees), it adds the trees' outputs in LightGBM's order, so its
scores equal LightGBM's to the last bit (``tests/unit/test_compiled_ranker.py`` compares them on
real candidates), and a list served with it is the list ``explain`` recomputes with or without it.

Compiling takes seconds (about 15 s for 70 trees on a loaded 2-core machine), so the object code
is kept in a file next to the model (``ranker-<key>.lleaves.o``; the key hashes the model text,
the lleaves and llvmlite versions and the CPU), loaded in milliseconds by the next start, and
compiled in the background when missing: LightGBM serves until it is ready.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

Predict = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float64]]


def available() -> bool:
    """Whether lleaves (and an llvmlite it works with) can be imported."""
    try:
        _modules()
    except ImportError:
        return False
    return True


def _modules() -> tuple[Any, Any]:
    import lleaves  # type: ignore[import-untyped,unused-ignore]
    import llvmlite  # type: ignore[import-untyped,unused-ignore]
    import llvmlite.binding  # type: ignore[import-untyped,unused-ignore]

    if not hasattr(llvmlite.binding, "PassManagerBuilder"):  # lleaves 1.3 needs llvmlite < 0.45
        raise ImportError(f"lleaves does not work with llvmlite {llvmlite.__version__} (the fast extra pins < 0.45)")
    return lleaves, llvmlite


def cache_file(model_text: str, directory: Path) -> Path:
    """Where the object code of ``model_text`` compiled on this machine is kept in ``directory``."""
    lleaves, llvmlite = _modules()
    cpu = llvmlite.binding.get_host_cpu_name()
    versions = f"{getattr(lleaves, '__version__', '?')}/{llvmlite.__version__}/{cpu}"
    key = hashlib.sha256(f"{versions}\n{model_text}".encode()).hexdigest()[:20]
    return directory / f"ranker-{key}.lleaves.o"


def compile_ranker(model_text: str, directory: Path) -> Predict:
    """The compiled model's predict (one thread), loading ``cache_file`` if it is there, else
    compiling and writing it (to a temporary name first, so a reader never sees half a file)."""
    lleaves, _ = _modules()
    target = cache_file(model_text, directory)
    with tempfile.TemporaryDirectory(prefix="insession-ranker-") as tmp:
        text = Path(tmp) / "ranker.txt"
        text.write_text(model_text, encoding="utf-8")
        model = lleaves.Model(model_file=str(text))
        blocks = max(int(model.num_trees()), 1)  # one block: LightGBM's order of addition
        if target.exists():
            model.compile(cache=str(target), fblocksize=blocks)
        else:
            started = time.perf_counter()
            partial = Path(tmp) / target.name
            model.compile(cache=str(partial), fblocksize=blocks)
            try:
                directory.mkdir(parents=True, exist_ok=True)
                staged = target.with_name(f"{target.name}.{os.getpid()}.tmp")
                staged.write_bytes(partial.read_bytes())
                os.replace(staged, target)
            except OSError as exc:  # a read-only model directory: compiled again next start
                logger.warning("compiled ranker not kept at %s: %s", target, exc.strerror or exc)
            logger.info("ranker compiled with lleaves in %.1f s", time.perf_counter() - started)

    def predict(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        return np.asarray(model.predict(np.asarray(x, dtype=np.float64), n_jobs=1), dtype=np.float64)

    return predict


def compile_in_background(model_text: str, directory: Path, ready: Callable[[Predict], None]) -> None:
    """Call ``ready`` with the compiled predict: at once when the object code is cached, else from
    a background thread once compiled. Does nothing without lleaves; a failure is logged (LightGBM
    keeps serving)."""
    if not available():
        return

    def build() -> None:
        try:
            ready(compile_ranker(model_text, directory))
        except Exception as exc:  # the LightGBM fallback is always there
            logger.warning("ranker not compiled with lleaves (LightGBM serves): %s", exc)

    if cache_file(model_text, directory).exists():
        build()
    else:
        threading.Thread(target=build, name="insession-compile-ranker", daemon=True).start()
