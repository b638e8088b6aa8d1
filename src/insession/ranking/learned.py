"""The learned ranker at serving time: a LightGBM LambdaRank model over ``feature_matrix``, scored
by its compiled form (``ranking.compiled``, lleaves) when that is installed and ready."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from insession.errors import ModelError
from insession.ranking import compiled
from insession.ranking.features import FEATURE_NAMES


class LearnedScorer:
    name = "lambdarank"

    def __init__(self, model_text: str, feature_names: Sequence[str], compile_dir: Path | None = None) -> None:
        """``compile_dir``: where the compiled ranker is kept (the model's directory); ``None``
        scores with LightGBM only."""
        if tuple(feature_names) != FEATURE_NAMES:
            theirs, ours = tuple(feature_names), FEATURE_NAMES
            added = [f for f in ours if f not in theirs]
            gone = [f for f in theirs if f not in ours]
            raise ModelError(
                f"model: its ranker reads {len(theirs)} features, this version of insession computes {len(ours)}"
                f" (new: {', '.join(added[:8]) or 'none'}; gone: {', '.join(gone[:8]) or 'none'}); "
                "the model was trained by another version: retrain it with `insession train`"
            )
        self.booster = lgb.Booster(model_str=model_text)
        #: The compiled model's predict once it is ready (``None``: LightGBM scores).
        self.compiled: compiled.Predict | None = None
        if compile_dir is not None:
            compiled.compile_in_background(model_text, compile_dir, self._use)

    def _use(self, predict: compiled.Predict) -> None:
        self.compiled = predict

    def score(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        if len(x) == 0:
            return np.zeros(0)
        fast = self.compiled
        if fast is not None:  # the same scores to the last bit (``ranking.compiled``)
            return fast(x)
        # One thread: the same input gives the same floating-point output on every machine load.
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float64)

    def contributions(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Per-feature SHAP contributions (last column: the bias)."""
        return np.asarray(self.booster.predict(x, pred_contrib=True, num_threads=1), dtype=np.float64)
