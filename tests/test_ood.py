"""Out-of-scope scores, threshold selection, the ``ood`` manifest rule and the SDK's fallback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from distilintent.core.bundle import Bundle
from distilintent.core.ood import (
    STATS_FILE,
    ClassStatistics,
    auroc,
    choose_ood_threshold,
    fallback_mask,
    fpr_at_tpr,
    ood_scores,
)
from distilintent.training.calibration import fit_ood_rule
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


def test_fallback_mask_combines_class_and_threshold() -> None:
    mask = fallback_mask(np.array([0.1, 5.0, 0.1]), 1.0, np.array([0, 0, 2]), oos_index=2)
    assert mask.tolist() == [False, True, True]


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


def test_sdk_falls_back_for_out_of_scope_inputs(oos_bundle: Path) -> None:
    from distilintent.sdk import IntentDetector

    with IntentDetector(oos_bundle) as detector:
        rule = Bundle.open(oos_bundle).manifest["ood"]
        assert (detector.ood_method, detector.ood_threshold) == (rule["method"], rule["threshold"])
        out_of_scope = detector.detect_batch(["capital of peru ok", "stock market prices thanks",
                                              "how tall is everest please"])
        assert all(result.is_fallback and result.intent == "nlu_fallback" for result in out_of_scope)
        in_scope = detector.detect_batch(["hello friend", "weather forecast", "book a flight"])
        assert [result.intent for result in in_scope] == ["greet", "weather", "book_flight"]
        assert not any(result.is_fallback for result in in_scope)
        single = detector.detect("capital of peru ok")
        assert single.is_fallback and single.ood_score == pytest.approx(out_of_scope[0].ood_score, rel=1e-4)
        assert detector.embed(["hello"]).shape == (1, 32)
        # a user's confidence threshold replaces the bundle's rule
    with IntentDetector(oos_bundle, fallback_threshold=0.0) as permissive:
        assert permissive.ood_method == "msp"
        assert not permissive.detect("hello friend").is_fallback


def test_evaluate_reports_ood_metrics_and_reliability(oos_bundle: Path, tmp_path: Path) -> None:
    from distilintent.training.evaluate import evaluate_bundle

    examples = toy_examples({**TOY_TEMPLATES, **OOS_TEMPLATES}, repeat=1)
    report = evaluate_bundle(oos_bundle, examples, split=None, out_dir=tmp_path, backend="onnxruntime")
    assert set(report["ood_scores"]) == {"msp", "energy", "mahalanobis", "cosine"}
    for values in report["ood_scores"].values():
        assert 0.0 <= values["auroc"] <= 1.0 and 0.0 <= values["fpr_at_95_tpr"] <= 1.0
    after = report["with_fallback"]
    assert after["method"] == Bundle.open(oos_bundle).manifest["ood"]["method"]
    assert after["oos_recall"] >= 0.9 and after["in_scope_accuracy"] >= 0.9
    assert sum(row["count"] for row in report["reliability"]) == report["n"]
    assert (tmp_path / "reliability.png").stat().st_size > 1000


def test_old_exports_without_embedding_fall_back_to_confidence(oos_bundle: Path, tmp_path: Path) -> None:
    """A bundle whose rule needs embeddings but whose graph has none: warn, use the confidence threshold."""
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
        manifest["calibration"]["fallback_threshold"] = 0.5
        return manifest

    update_bundle(path, old_style)
    with pytest.warns(UserWarning, match="no 'sentence_embedding' output"):
        detector = IntentDetector(path)
    assert detector.ood_method == "msp" and detector.fallback_threshold == 0.5
    assert detector.detect("hello friend").intent == "greet"


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


def test_calibrate_without_a_validation_split_uses_the_stored_sample(oos_bundle: Path, tmp_path: Path) -> None:
    from distilintent.training.calibration import recalibrate_bundle

    path = shutil.copytree(oos_bundle, tmp_path / "bundle")
    stored = Bundle.open(path).read_bytes("samples/validation.jsonl").decode().splitlines()
    train_only = [e for e in toy_examples({**TOY_TEMPLATES, **OOS_TEMPLATES}, repeat=1)]
    result = recalibrate_bundle(path, [type(e)(e.text, e.label, "train") for e in train_only])
    assert result["ood"]["examples"] == len(stored)
    assert Bundle.open(path).manifest["ood"]["method"] == result["ood"]["method"]


@pytest.mark.parametrize("method", ["msp", "energy", "mahalanobis", "cosine"])
def test_every_stored_method_is_applied_by_the_sdk(oos_bundle: Path, tmp_path: Path, method: str) -> None:
    """Whatever rule the manifest stores, the SDK computes that score and falls back above its threshold."""
    from distilintent.core.bundle import update_bundle
    from distilintent.sdk import IntentDetector

    path = shutil.copytree(oos_bundle, tmp_path / "bundle")
    with IntentDetector(path) as probe:
        probe.ood_method = method
        probe._ood_stats = probe._ood_stats or ClassStatistics.from_bytes(
            Bundle.open(path).read_bytes(STATS_FILE), len(probe.labels))
        score = float(probe._scores(*probe._outputs_of(["hello friend"], 1))[0])

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
