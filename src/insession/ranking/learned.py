"""The learned ranker at serving time: a LightGBM LambdaRank model over ``feature_matrix``."""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from insession.ranking.features import FEATURE_NAMES


class LearnedScorer:
    name = "lambdarank"

    def __init__(self, model_text: str, feature_names: Sequence[str]) -> None:
        if tuple(feature_names) != FEATURE_NAMES:
            raise ValueError("ranker features differ from this version's FEATURE_NAMES; retrain with `insession train`")
        self.booster = lgb.Booster(model_str=model_text)

    def score(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        if len(x) == 0:
            return np.zeros(0)
        # One thread: the same input gives the same floating-point output on every machine load.
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float64)

    def contributions(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Per-feature SHAP contributions (last column: the bias)."""
        return np.asarray(self.booster.predict(x, pred_contrib=True, num_threads=1), dtype=np.float64)
