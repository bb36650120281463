"""Run inside the Rasa venv: ``parse.py MODEL TEXTS_JSON [BUNDLE]`` prints one JSON line.

``{"rasa": [<Agent.parse_message result>, ...], "sdk": [<IntentResult.to_rasa()>, ...] | null}``
"""

import asyncio
import json
import shutil
import sys
import tempfile


def main() -> None:
    from rasa.core.agent import Agent

    model, texts = sys.argv[1], json.loads(sys.argv[2])
    with tempfile.TemporaryDirectory() as scratch:  # Rasa unpacks and deletes; load from a copy to be sure
        copy = shutil.copy(model, scratch)
        agent = Agent.load(copy)
    parsed = [asyncio.run(agent.parse_message(text)) for text in texts]
    sdk = None
    if len(sys.argv) > 3:
        from distilintent.sdk import IntentDetector

        with IntentDetector(sys.argv[3]) as detector:
            sdk = [dict(detector.detect(text).to_rasa(), variant=detector.variant.name) for text in texts]
    print(json.dumps({"rasa": parsed, "sdk": sdk}))


if __name__ == "__main__":
    main()
