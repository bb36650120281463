"""Evaluation and calibration of bundles: numpy work on a bundle's outputs, no torch for an exported bundle."""

from __future__ import annotations

from distilintent.evaluation.calibration import fit_fallback, fit_ood_rule, recalibrate_bundle
from distilintent.evaluation.outputs import bundle_outputs
from distilintent.evaluation.report import evaluate_bundle, report_from_logits

__all__ = ["bundle_outputs", "evaluate_bundle", "fit_fallback", "fit_ood_rule", "recalibrate_bundle",
           "report_from_logits"]
