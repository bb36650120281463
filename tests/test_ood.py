"""Out-of-scope scores, threshold selection, the ``ood`` manifest rule and the SDK's fallback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from distilintent.core.bundle import Bundle
from distilintent.core.fallback import FallbackRule
from distilintent.core.ood import (
    STATS_FILE,
    ClassStatistics,
    auroc,
    choose_ood_threshold,
    fpr_at_tpr,
    ood_scores,
)
from distilintent.evaluation import fit_ood_rule
from tests.conftest import TOY_TEMPLATES, tiny_train_options, toy_examples


def separable(seed: int = 0, classes: int = 4, per_class: int = 60, dim: int = 16):
    """Class clusters in-scope; out-of-scope points far from all of them."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 4, (classes, dim))
    targets = np.repeat(np.arange(classes), per_class)
    inside = means[targets] + rng.normal(0, 1, (len(targets), dim))
    outside = rng.normal(0, 1, (per_class, dim)) + 12 * rng.choice([-1, 1], (per_class, dim))
    return means, targets, inside, outside


def test_distance_scores_separate_far_points() -> None:
    means, targets, inside, outside = separable()
    stats = ClassStatistics.fit(inside, targets)
    for method in ("mahalanobis", "cosine"):
        scores = ood_scores(method, np.zeros((len(inside) + len(outside), 4)), np.vstack([inside, outside]),
                            stats=stats)
        is_oos = np.r_[np.zeros(len(inside), bool), np.ones(len(outside), bool)]
        assert auroc(scores, is_oos) > 0.99, method
    # a class mean is at distance ~0 from itself
    assert ood_scores("mahalanobis", np.zeros((4, 4)), means, stats=stats).max() < 1.0


def test_logit_scores_follow_confidence() -> None:
    confident = np.array([[10.0, 0.0, 0.0]])
    unsure = np.array([[1.0, 0.9, 0.8]])
    for method in ("msp", "energy"):
        high = ood_scores(method, unsure)[0]
        low = ood_scores(method, confident)[0]
        assert high > low, method
    # energy ignores the out-of-scope class's own logit
    with_oos = np.array([[0.0, 0.0, 20.0]])
    assert ood_scores("energy", with_oos, oos_index=2)[0] > ood_scores("energy", with_oos)[0]
    with pytest.raises(ValueError, match="needs the model's embeddings"):
        ood_scores("mahalanobis", confident)
    with pytest.raises(ValueError, match="unknown out-of-scope method"):
        ood_scores("nonsense", confident)


def test_auroc_matches_pair_counting_and_fpr() -> None:
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=200), 1)  # ties on purpose
    is_oos = rng.random(200) < 0.3
    pos, neg = scores[is_oos], scores[~is_oos]
    expected = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(scores, is_oos) == pytest.approx(expected)
    assert auroc(scores, np.zeros(200, bool)) is None
    assert fpr_at_tpr(np.r_[np.zeros(100), np.ones(10)], np.r_[np.zeros(100, bool), np.ones(10, bool)]) == 0.0


def test_threshold_with_oos_examples_separates_them() -> None:
    ood = np.r_[np.linspace(0, 1, 90), np.linspace(2, 3, 10)]
    is_oos = np.r_[np.zeros(90, bool), np.ones(10, bool)]
    correct = np.r_[np.ones(90, bool), np.zeros(10, bool)]
    choice = choose_ood_threshold(ood, correct, is_oos)
    assert 1.0 <= choice["threshold"] < 2.0
    assert choice["in_scope_accuracy"] == 1.0 and choice["oos_recall"] == 1.0
    # an out-of-scope example the model already predicts as its out-of-scope class counts as caught
    correct_oos = correct.copy()
    correct_oos[-1] = True
    ood[-1] = 0.5
    assert choose_ood_threshold(ood, correct_oos, is_oos)["oos_recall"] == 1.0


def test_threshold_without_oos_keeps_the_coverage() -> None:
    ood = np.arange(1000, dtype=float)
    choice = choose_ood_threshold(ood, np.ones(1000, bool), None, in_scope_coverage=0.97)
    assert np.mean(ood <= choice["threshold"]) == pytest.approx(0.97, abs=0.002)
    assert choice["criterion"] == "in_scope_coverage=0.97"


def test_the_rule_combines_class_and_threshold() -> None:
    rule = FallbackRule("energy", 1.0, oos_index=2)
    assert rule.mask(np.array([0.1, 5.0, 0.1]), np.array([0, 0, 2])).tolist() == [False, True, True]
    assert FallbackRule("energy", None).mask(np.array([0.1, 5.0]), np.array([0, 0])).tolist() == [False, False]
    # a minimum confidence is compared as given: 0.7 means "under 0.7", with no 1 - x rounding
    confidence = FallbackRule.minimum_confidence(0.7)
    assert confidence.mask(np.zeros(3), np.zeros(3), np.array([0.7, 0.69999, 0.9])).tolist() == [False, True, False]
    logits = np.array([[3.0, 0.0], [0.1, 0.0]])
    scores, mask = confidence.decide(logits)
    assert mask.tolist() == [False, True] and scores[1] == pytest.approx(1 - 1 / (1 + np.exp(-0.1)))
    with pytest.raises(ValueError, match="needs the bundle's class statistics"):
        FallbackRule("mahalanobis", 1.0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        FallbackRule.minimum_confidence(1.5)


def test_statistics_round_trip_and_mismatch() -> None:
    _, targets, inside, _ = separable()
    stats = ClassStatistics.fit(inside, targets)
    again = ClassStatistics.from_bytes(stats.to_bytes(), num_labels=4, dim=16)
    assert np.array_equal(again.whitening, stats.whitening)
    assert np.allclose(again.mahalanobis(inside[:5]), stats.mahalanobis(inside[:5]))
    with pytest.raises(ValueError, match="do not fit the model"):
        ClassStatistics.from_bytes(stats.to_bytes(), num_labels=3)
    with pytest.raises(ValueError, match="not a valid"):
        ClassStatistics.from_bytes(b"garbage", num_labels=4)


def test_auto_rule_picks_a_score_that_separates() -> None:
    means, targets, inside, outside = separable(classes=3)
    stats = ClassStatistics.fit(inside, targets)
    embeddings = np.vstack([inside, outside])
    # logits that say nothing about scope: a constant confident prediction for every text
    logits = np.zeros((len(embeddings), 4))
    logits[np.arange(len(inside)), targets] = 5.0
    logits[len(inside):, 0] = 5.0
    truth = [str(t) for t in targets] + ["oos"] * len(outside)
    rule = fit_ood_rule(logits, embeddings, truth, ["0", "1", "2", "oos"], temperature=1.0, stats=stats,
                        oos_label="oos")
    assert rule["method"] in ("mahalanobis", "cosine")
    assert rule["validation"][rule["method"]]["auroc"] > 0.99
    assert rule["stats"] == STATS_FILE
    forced = fit_ood_rule(logits, embeddings, truth, ["0", "1", "2", "oos"], temperature=1.0, stats=None,
                          oos_label="oos", method="energy")
    assert forced["method"] == "energy" and forced["stats"] is None
    with pytest.raises(ValueError, match="needs embeddings"):
        fit_ood_rule(logits, None, truth, ["0", "1", "2", "oos"], temperature=1.0, stats=None, oos_label="oos",
                     method="mahalanobis")


OOS_TEMPLATES = {"oos": ["stock market prices", "capital of peru", "how tall is everest", "play jazz music",
                         "translate into german", "my car battery died"]}


@pytest.fixture(scope="module")
def oos_bundle(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained with out-of-scope examples, exported to ONNX (FP32)."""
    from distilintent.training.config import TrainConfig
    from distilintent.training.export import export_bundle
    from distilintent.training.trainer import train

    examples = toy_examples({**TOY_TEMPLATES, **OOS_TEMPLATES}, repeat=3)
    output = tmp_path_factory.mktemp("ood") / "bundle"
    config = TrainConfig().updated(tiny_train_options(tiny_base, epochs=10, validation_fraction=0.25))
    train(examples, config, output, progress=False)
    export_bundle(output, formats=("onnx",))
    return output


def test_manifest_stores_the_rule_and_statistics(oos_bundle: Path) -> None:
    bundle = Bundle.open(oos_bundle)
    rule = bundle.manifest["ood"]
    assert rule["method"] in ("msp", "energy", "mahalanobis", "cosine")
    assert isinstance(rule["threshold"], float)
    assert set(rule["validation"]) == {"msp", "energy", "mahalanobis", "cosine"}
    assert STATS_FILE in bundle.manifest["files"]  # always stored, so calibrate may switch scores later
    stats = ClassStatistics.from_bytes(bundle.read_bytes(STATS_FILE), len(bundle.labels))
    assert bundle.labels.index("oos") not in stats.label_indices.tolist()  # means of in-scope classes only
    assert bundle.variants["onnx-fp32"].file
    assert bundle.manifest["variants"]["onnx-fp32"]["outputs"] == ["logits", "sentence_embedding"]


# Never seen in training, validation or calibration: words none of the toy intents uses.
UNSEEN_OUT_OF_SCOPE = ["quantum physics lecture", "recipe for lasagna", "my tax return deadline",
                       "purple elephants dancing", "reset my router password", "who won the football match"]
UNSEEN_IN_SCOPE = {"hello hello friend": "greet", "bye see you": "goodbye", "book a plane ticket": "book_flight",
                   "rain or sunny today": "weather", "good morning friend": "greet",
                   "flight to rome please": "book_flight"}


@pytest.fixture(scope="module")
def in_scope_bundle(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained on in-scope intents only (no out-of-scope class), exported to ONNX (FP32)."""
    from distilintent.training.config import TrainConfig
    from distilintent.training.export import export_bundle
    from distilintent.training.trainer import train

    output = tmp_path_factory.mktemp("in-scope") / "bundle"
    config = TrainConfig().updated(tiny_train_options(tiny_base, epochs=10, validation_fraction=0.25))
    train(toy_examples(TOY_TEMPLATES, repeat=3), config, output, progress=False)
    export_bundle(output, formats=("onnx",))
    return output


def test_sdk_falls_back_on_the_score_for_texts_it_never_saw(in_scope_bundle: Path) -> None:
    """No out-of-scope class to predict: only the Mahalanobis score can make these texts fall back."""
    from distilintent.sdk import IntentDetector

    with IntentDetector(in_scope_bundle) as detector:
        rule = Bundle.open(in_scope_bundle).manifest["ood"]
        assert (detector.ood_method, detector.ood_threshold) == ("mahalanobis", rule["threshold"])
        outside = detector.ood_score(UNSEEN_OUT_OF_SCOPE)
        inside = detector.ood_score(list(UNSEEN_IN_SCOPE))
        assert outside.min() > detector.ood_threshold > inside.max()  # the score separates them
        out_of_scope = detector.detect_batch(UNSEEN_OUT_OF_SCOPE)
        assert all(result.is_fallback and result.intent == "nlu_fallback" for result in out_of_scope)
        assert min(result.confidence for result in out_of_scope) > 0.9  # a confidence threshold would answer
        in_scope = detector.detect_batch(list(UNSEEN_IN_SCOPE))
        assert [result.intent for result in in_scope] == list(UNSEEN_IN_SCOPE.values())
        single = detector.detect(UNSEEN_OUT_OF_SCOPE[0])
        assert single.is_fallback and single.ood_score == pytest.approx(out_of_scope[0].ood_score, rel=1e-4)
        assert detector.embed(["hello"]).shape == (1, 32)
    with IntentDetector(in_scope_bundle, fallback_threshold=0.5) as by_confidence:  # replaces the bundle's rule
        assert by_confidence.ood_method == "msp" and by_confidence.fallback_threshold == 0.5
        assert not any(result.is_fallback for result in by_confidence.detect_batch(UNSEEN_OUT_OF_SCOPE))


def test_evaluate_reports_ood_metrics_on_texts_it_never_saw(in_scope_bundle: Path, tmp_path: Path) -> None:
    from distilintent.core.data import Example
    from distilintent.evaluation import evaluate_bundle

    examples = ([Example(text, label) for text, label in UNSEEN_IN_SCOPE.items()]
                + [Example(text, "oos") for text in UNSEEN_OUT_OF_SCOPE])
    report = evaluate_bundle(in_scope_bundle, examples, split=None, out_dir=tmp_path, backend="onnxruntime",
                             oos_label="oos")
    assert set(report["ood_scores"]) == {"msp", "energy", "mahalanobis", "cosine"}
    assert report["ood_scores"]["mahalanobis"] == {"auroc": 1.0, "fpr_at_95_tpr": 0.0}
    assert report["accuracy"] == 0.5  # argmax alone answers every out-of-scope text with an intent
    after = report["with_fallback"]
    assert after["method"] == "mahalanobis" and after["threshold"] == Bundle.open(in_scope_bundle).manifest["ood"][
        "threshold"]
    assert (after["oos_recall"], after["in_scope_accuracy"], after["accuracy"]) == (1.0, 1.0, 1.0)
    assert after["fallback_rate"] == 0.5
    assert sum(row["count"] for row in report["reliability"]) == len(UNSEEN_IN_SCOPE)  # labels the model knows
    assert (tmp_path / "reliability.png").stat().st_size > 1000


def test_old_exports_without_embedding_fall_back_to_the_msp_rule(oos_bundle: Path, tmp_path: Path) -> None:
    """A bundle whose rule needs embeddings but whose graph has none: warn, use the msp rule of the same fit."""
    import onnx

    from distilintent.core.bundle import update_bundle
    from distilintent.sdk import IntentDetector

    path = shutil.copytree(oos_bundle, tmp_path / "bundle")

    def old_style(root: Path, manifest: dict) -> dict:
        model = onnx.load(str(root / "onnx/model.onnx"))
        del model.graph.output[1]
        (root / "onnx/model.onnx").unlink()
        onnx.save(model, str(root / "onnx/model.onnx"))
        manifest["ood"] = {**manifest["ood"], "method": "mahalanobis"}
        return manifest

    update_bundle(path, old_style)
    with pytest.warns(UserWarning, match="no 'sentence_embedding' output"):
        detector = IntentDetector(path)
    msp = Bundle.open(path).manifest["ood"]["validation"]["msp"]
    assert detector.ood_method == "msp" and detector.ood_threshold == msp["threshold"]
    assert detector.detect("hello friend").intent == "greet"


def test_a_bundle_from_before_the_one_rule_keeps_its_confidence_threshold(oos_bundle: Path, tmp_path: Path) -> None:
    """Only ``calibration.fallback_threshold`` (no ``ood``): a minimum confidence, compared as stored."""
    from distilintent.core.bundle import update_bundle
    from distilintent.sdk import IntentDetector

    path = shutil.copytree(oos_bundle, tmp_path / "bundle")

    def legacy(root: Path, manifest: dict) -> dict:
        manifest.pop("ood")
        manifest["calibration"]["fallback_threshold"] = 0.999999
        return manifest

    update_bundle(path, legacy)
    with IntentDetector(path) as detector:
        assert (detector.ood_method, detector.fallback_threshold) == ("msp", 0.999999)
        result = detector.detect("hello friend")
        assert result.is_fallback == (result.confidence < 0.999999)
        assert result.ranking[0][0] == "greet"


def test_calibrate_refits_the_rule_and_keeps_statistics(oos_bundle: Path, tmp_path: Path) -> None:
    from distilintent import cli

    path = shutil.copytree(oos_bundle, tmp_path / "bundle")
    data = tmp_path / "data.jsonl"
    rows = [{"text": e.text, "intent": e.label, "split": "validation"}
            for e in toy_examples({**TOY_TEMPLATES, **OOS_TEMPLATES}, repeat=1)]
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    stats_before = Bundle.open(path).read_bytes(STATS_FILE)
    assert cli.main(["calibrate", "--model", str(path), "--data", str(data)]) == 0
    manifest = Bundle.open(path).manifest
    assert manifest["ood"]["examples"] == len(rows)
    assert Bundle.open(path).read_bytes(STATS_FILE) == stats_before


def test_calibrate_without_a_validation_split_holds_out_what_training_held_out(oos_bundle: Path,
                                                                              tmp_path: Path) -> None:
    from distilintent.evaluation import recalibrate_bundle

    path = shutil.copytree(oos_bundle, tmp_path / "bundle")
    held_out = Bundle.open(path).manifest["data"]["counts"]["validation"]
    result = recalibrate_bundle(path, toy_examples({**TOY_TEMPLATES, **OOS_TEMPLATES}, repeat=3))  # training's data
    assert result["ood"]["examples"] == held_out == 40  # 25 % of the 30 texts of each of the 5 intents
    assert result["fitted_on"] == {"variant": "onnx-fp32", "split": "held out of train"}
    assert Bundle.open(path).manifest["ood"] == result["ood"]


@pytest.mark.parametrize("method", ["msp", "energy", "mahalanobis", "cosine"])
def test_every_stored_method_is_applied_by_the_sdk(oos_bundle: Path, tmp_path: Path, method: str) -> None:
    """Whatever rule the manifest stores, the SDK computes that score and falls back above its threshold."""
    from distilintent.core.bundle import update_bundle
    from distilintent.sdk import IntentDetector

    path = shutil.copytree(oos_bundle, tmp_path / "bundle")
    stats = ClassStatistics.from_bytes(Bundle.open(path).read_bytes(STATS_FILE), len(TOY_TEMPLATES) + 1)
    with IntentDetector(path) as probe:
        rule = FallbackRule(method, None, probe.temperature, probe.labels.index("oos"), stats)
        score = float(rule.scores(*probe.outputs(["hello friend"]))[0])

    def set_rule(root: Path, manifest: dict) -> dict:
        manifest["ood"] = {**manifest["ood"], "method": method, "threshold": score - 1e-6, "stats": STATS_FILE}
        return manifest

    update_bundle(path, set_rule)
    with IntentDetector(path) as detector:
        assert detector.ood_method == method
        result = detector.detect("hello friend")
        assert result.ood_score == pytest.approx(score, rel=1e-5, abs=1e-6)
        assert result.is_fallback  # just over the threshold


def test_evaluate_command_prints_the_fallback_rule_and_aurocs(oos_bundle: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from distilintent import cli

    data = tmp_path / "data.jsonl"
    rows = [{"text": e.text, "intent": e.label} for e in toy_examples({**TOY_TEMPLATES, **OOS_TEMPLATES}, repeat=1)]
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    assert cli.main(["evaluate", "--model", str(oos_bundle), "--data", str(data), "--split", "all"]) == 0
    out = capsys.readouterr().out
    assert "with fallback: method " in out and "threshold" in out
    assert out.count("AUROC") == 4
