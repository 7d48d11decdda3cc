"""The MLflow pyfunc of a seqrec model, logged as *models-from-code*: MLflow stores this file and
loads it, so no pickled Python object is ever deserialised. Its artifact `bundle` is the directory
written by tasks.bundle.write_bundle (or write_baseline_bundle: a baseline as champion); the code it
imports (seqrec/, models/, tasks/) travels with it as the model's code paths.

predict(DataFrame) -> DataFrame: input rows with `user_id` (history looked up in the bundle) and/or
`history` (list of item ids, oldest first; optional `event_types` / `timestamps` lists) and optional
`k`; output `user_id`, `item_ids`, `scores`, `source` ('history', 'user' or 'popular').
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class SeqrecPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from tasks.bundle import Scorer

        self.scorer = Scorer(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", 10))
        return self.scorer.recommend(model_input, k=k)


mlflow.models.set_model(SeqrecPyfunc())
