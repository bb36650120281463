"""Rasa integration: the ``DistilIntentClassifier`` NLU component and the custom actions.

Importing this package imports no Rasa: ``DistilIntentClassifier`` is loaded on first access, so that
``- name: distilintent.plugin.DistilIntentClassifier`` in a Rasa ``config.yml`` and
``from distilintent.plugin import DistilIntentClassifier`` both work inside Rasa, and nothing else pays
for Rasa. The class lives in :mod:`distilintent.plugin.component`, the module path Rasa records in
trained models.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DistilIntentClassifier"]


def __getattr__(name: str) -> Any:
    if name == "DistilIntentClassifier":
        try:
            from distilintent.plugin.component import DistilIntentClassifier
        except ModuleNotFoundError as err:
            if err.name is not None and err.name.split(".")[0] == "rasa":
                raise ImportError(
                    "distilintent.plugin.DistilIntentClassifier is a Rasa component and needs Rasa "
                    "(Rasa 3.x, Python 3.10: pip install 'distilintent[rasa]')"
                ) from err
            raise
        return DistilIntentClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
