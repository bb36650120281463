"""A rasa-sdk custom action that classifies a slot's text (or the latest message) with a bundle.

Needs ``pip install 'distilintent[rasa-sdk]'`` in the action server's environment. Subclass it, name it,
point it at a bundle and list it under ``actions:`` in the domain::

    from distilintent.plugin.actions import ClassifyTextAction

    class ActionClassifyComplaint(ClassifyTextAction):
        model_path = "models/complaint-topics"   # or set $DISTILINTENT_MODEL
        source_slot = "complaint_text"            # None: the latest user message
        intent_slot = "complaint_topic"
        confidence_slot = "complaint_topic_confidence"

        def name(self) -> str:
            return "action_classify_complaint"

The action sets ``intent_slot`` (and ``confidence_slot`` if given) from the result; the fallback intent
when the model is unsure. Override :meth:`events_for` to do more with the
:class:`~distilintent.core.results.IntentResult`. The detector is loaded once per bundle path and
classification runs off the action server's event loop.
"""

from __future__ import annotations

from typing import Any

from distilintent.core.deps import require
from distilintent.core.results import IntentResult
from distilintent.sdk import get_detector

require("rasa_sdk", "rasa-sdk", "distilintent.plugin.actions")

from rasa_sdk import Action, Tracker  # noqa: E402
from rasa_sdk.events import SlotSet  # noqa: E402
from rasa_sdk.executor import CollectingDispatcher  # noqa: E402


class ClassifyTextAction(Action):
    """Base class: classify ``source_slot`` (or the latest user text) and set ``intent_slot``."""

    model_path: str | None = None  # None: $DISTILINTENT_MODEL
    source_slot: str | None = None  # None: the latest user message
    intent_slot: str = "classified_intent"
    confidence_slot: str | None = None

    def name(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} must define name() returning the action's name")

    def text_of(self, tracker: Tracker) -> str | None:
        if self.source_slot is not None:
            value = tracker.get_slot(self.source_slot)
        else:
            value = (tracker.latest_message or {}).get("text")
        return value if isinstance(value, str) and value.strip() else None

    def events_for(self, result: IntentResult, dispatcher: CollectingDispatcher, tracker: Tracker,
                   domain: dict[str, Any]) -> list[dict[str, Any]]:
        events = [SlotSet(self.intent_slot, result.intent)]
        if self.confidence_slot is not None:
            events.append(SlotSet(self.confidence_slot, result.confidence))
        return events

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> list[dict[str, Any]]:
        text = self.text_of(tracker)
        if text is None:
            return []
        result = await get_detector(self.model_path).adetect(text)
        return self.events_for(result, dispatcher, tracker, domain)
