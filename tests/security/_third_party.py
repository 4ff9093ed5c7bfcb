"""A classifier outside the ``sklearn.`` namespace, standing in for a third-party one (``xgboost.XGBClassifier``):
tlkit constructs and loads it only when the user allows it."""

from __future__ import annotations

from sklearn.linear_model import LogisticRegression


class ThirdPartyClassifier(LogisticRegression):
    pass


class Foreign:
    pass
