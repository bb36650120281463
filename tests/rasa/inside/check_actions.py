"""``ClassifyTextAction`` run by rasa-sdk's own ``ActionExecutor``, as the action server runs it.

Run by the Rasa venv's pytest (see ``tests/rasa/test_rasa.py``); ``DISTILINTENT_TEST_BUNDLE`` is the toy bundle.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from rasa_sdk.executor import ActionExecutor

from distilintent.plugin.actions import ClassifyTextAction
from distilintent.sdk import IntentDetector

BUNDLE = os.environ["DISTILINTENT_TEST_BUNDLE"]


class ActionClassifyRequest(ClassifyTextAction):
    model_path = BUNDLE
    source_slot = "request_text"
    intent_slot = "request_topic"
    confidence_slot = "request_confidence"

    def name(self) -> str:
        return "action_classify_request"


class ActionClassifyLatest(ClassifyTextAction):
    model_path = BUNDLE

    def name(self) -> str:
        return "action_classify_latest"


def call(action: str, slots: dict, latest_text: str | None) -> dict:
    executor = ActionExecutor()
    executor.register_action(ActionClassifyRequest)
    executor.register_action(ActionClassifyLatest)
    tracker = {"sender_id": "user-1", "slots": slots, "latest_message": {"text": latest_text, "intent": {}},
               "events": [], "paused": False, "followup_action": None, "active_loop": {},
               "latest_action_name": "action_listen"}
    domain = {"intents": [], "entities": [], "slots": {}, "responses": {}, "actions": [action], "forms": {}}
    return asyncio.run(executor.run({"next_action": action, "sender_id": "user-1", "tracker": tracker,
                                     "domain": domain, "version": "3.6.21"}))


def test_classifies_a_slot_and_sets_the_result_slots() -> None:
    response = call("action_classify_request", {"request_text": "a flight to rome please"}, "something else")
    with IntentDetector(BUNDLE) as detector:
        expected = detector.detect("a flight to rome please")
    events = response["events"]
    assert [(e["event"], e["name"]) for e in events] == [("slot", "request_topic"), ("slot", "request_confidence")]
    assert events[0]["value"] == "book_flight" == expected.intent
    assert events[1]["value"] == pytest.approx(expected.confidence)
    assert response["responses"] == []


def test_classifies_the_latest_message_by_default() -> None:
    response = call("action_classify_latest", {}, "hello friend")
    assert response["events"] == [{"event": "slot", "timestamp": None, "name": "classified_intent", "value": "greet"}]


def test_no_text_sets_nothing() -> None:
    assert call("action_classify_request", {"request_text": None}, "hello")["events"] == []
    assert call("action_classify_latest", {}, "   ")["events"] == []


def test_a_subclass_without_a_name_says_so() -> None:
    with pytest.raises(NotImplementedError, match="must define name"):
        ClassifyTextAction().name()
