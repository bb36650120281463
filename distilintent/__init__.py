"""distilintent: intent recognition for chatbots with a small fine-tuned DistilBERT.

Serving needs only numpy, tokenizers and onnxruntime (or OpenVINO)::

    from distilintent import sdk
    sdk.detect_intent("book a table for two", model="path/to/bundle")
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
