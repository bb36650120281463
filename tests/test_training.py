"""Training end to end on tiny models: bundle contents, other label kinds, resume, torchrun, evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tiny_train_options, toy_examples

from distilintent.core.bundle import Bundle
from distilintent.core.data import Example
from distilintent.evaluation import evaluate_bundle
from distilintent.training import TrainConfig, train


def weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(Bundle.open(path).read_bytes("model/model.safetensors"))


@pytest.fixture(scope="module")
def trained(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TrainConfig().updated(tiny_train_options(tiny_base))
    result = train(toy_examples(), config, tmp_path_factory.mktemp("train") / "toy", progress=False)
    return result.bundle_path


def test_training_learns_and_writes_a_complete_bundle(trained: Path) -> None:
    bundle = Bundle.open(trained)
    manifest = bundle.manifest
    assert bundle.labels == ("book_flight", "goodbye", "greet", "weather")
    # 4 labels × 6 texts × 5 suffixes; 10 % held out, stratified: 3 per label. Separable: 1.0 from epoch 3 of 6.
    assert manifest["data"]["counts"] == {"train": 108, "validation": 12, "test": 0}
    assert manifest["metrics"]["validation"]["n"] == 12 and manifest["metrics"]["validation"]["accuracy"] == 1.0
    assert len(manifest["data"]["fingerprint"]) == 64
    assert manifest["training"]["learning_rate"] == 3e-3
    calibration = manifest["calibration"]
    assert calibration["temperature"] > 0 and "fallback_threshold" not in calibration  # one threshold: ood's
    assert manifest["ood"]["method"] == "mahalanobis" and manifest["ood"]["threshold"] > 0
    assert "samples" not in manifest  # kept next to the bundle: the validation split and (<= 300) training texts
    kept = {path.name: len(path.read_text().splitlines()) for path in trained.with_name("toy.samples").iterdir()}
    assert kept == {"validation.jsonl": 12, "calibration.jsonl": 108}
    bundle.verify()
    assert not trained.with_name(trained.name + ".checkpoints").exists()  # removed after success


def test_same_seed_same_model(trained: Path, tiny_base: Path, tmp_path: Path) -> None:
    config = TrainConfig().updated(tiny_train_options(tiny_base))
    again = train(toy_examples(), config, tmp_path / "again", progress=False).bundle_path
    first, second = weights(trained), weights(again)
    assert all(np.array_equal(first[key], second[key]) for key in first)


def test_sentiment_labels_train_through_the_same_path(tiny_base: Path, tmp_path: Path) -> None:
    data = tmp_path / "reviews.csv"
    rows = ["text,label"]
    for word in ("great", "wonderful", "loved it", "excellent", "superb", "brilliant"):
        rows += [f"{word} movie,positive", f"a {word} film,positive", f"{word} acting,positive"]
    for word in ("awful", "terrible", "boring", "dreadful", "horrible", "waste of time"):
        rows += [f"{word} movie,negative", f"a {word} film,negative", f"{word} acting,negative"]
    data.write_text("\n".join(rows) + "\n")
    config = TrainConfig().updated(tiny_train_options(tiny_base, epochs=8))
    result = train(data, config, tmp_path / "sentiment", progress=False)
    bundle = Bundle.open(result.bundle_path)
    assert bundle.labels == ("negative", "positive") and bundle.oos_label is None
    report = evaluate_bundle(result.bundle_path, data, split=None, backend="torch")
    assert report["n"] == 36 and report["accuracy"] == 1.0  # all of the (separable) data, 18 texts per label


def test_out_of_scope_metrics_when_data_has_oos(tiny_base: Path, tmp_path: Path) -> None:
    templates = {"greet": ["hello", "hi there", "hey hello"], "weather": ["weather today", "will it rain", "sunny"],
                 "oos": ["what is quantum physics", "my cat is orange", "sell my car"]}
    config = TrainConfig().updated(tiny_train_options(tiny_base))
    result = train(toy_examples(templates), config, tmp_path / "oos", progress=False)
    bundle = Bundle.open(result.bundle_path)
    assert bundle.oos_label == "oos"
    validation = bundle.manifest["metrics"]["validation"]  # 2 validation texts per label, oos included
    assert validation["n"] == 6
    assert {key: validation[key] for key in ("in_scope_accuracy", "oos_recall", "oos_precision")} == {
        "in_scope_accuracy": 1.0, "oos_recall": 1.0, "oos_precision": 1.0}  # separable: reached at epoch 2 of 6
    assert bundle.manifest["ood"]["criterion"] == "max in_scope_accuracy + oos_recall"


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(tiny_base: Path, tmp_path: Path, monkeypatch) -> None:
    from distilintent.training import trainer as trainer_module

    options = tiny_train_options(tiny_base, epochs=3, checkpoint_every=5, dropout=0.1)
    config = TrainConfig().updated(options)
    reference = train(toy_examples(), config, tmp_path / "reference", progress=False).bundle_path

    original = trainer_module._Run._lr_factor

    def interrupt_mid_epoch(self, step: int) -> float:
        if step == 17:  # epoch 2 of 3 (14 steps per epoch), after the checkpoint at step 15
            raise Interrupt
        return original(self, step)

    monkeypatch.setattr(trainer_module._Run, "_lr_factor", interrupt_mid_epoch)
    with pytest.raises(Interrupt):
        train(toy_examples(), config, tmp_path / "resumed", progress=False)
    assert not (tmp_path / "resumed").exists()  # no half bundle
    state = json.loads((tmp_path / "resumed.checkpoints" / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 15)
    monkeypatch.setattr(trainer_module._Run, "_lr_factor", original)
    resumed = train(toy_examples(), config, tmp_path / "resumed", resume=True, progress=False).bundle_path
    first, second = weights(reference), weights(resumed)
    assert max(float(np.abs(first[key] - second[key]).max()) for key in first) < 1e-6


def test_resume_refuses_a_checkpoint_of_other_data(tiny_base: Path, tmp_path: Path, monkeypatch) -> None:
    from distilintent.core.errors import DistilIntentError
    from distilintent.training import trainer as trainer_module

    config = TrainConfig().updated(tiny_train_options(tiny_base, epochs=2, checkpoint_every=3))
    monkeypatch.setattr(trainer_module._Run, "write_bundle", lambda *a, **k: (_ for _ in ()).throw(Interrupt()))
    with pytest.raises(Interrupt):
        train(toy_examples(), config, tmp_path / "m", progress=False)
    monkeypatch.undo()
    other = toy_examples() + [Example("completely new text", "greet")]
    with pytest.raises(DistilIntentError, match="different train fingerprint"):
        train(other, config, tmp_path / "m", resume=True, progress=False)


def test_state_json_names_a_complete_checkpoint_at_every_step_of_a_save(tmp_path: Path) -> None:
    """What a process polling ``<output>.checkpoints/state.json`` (or a kill at any moment) can see: after
    every call ``save_checkpoint`` makes, ``state.json`` is there and loads as a whole checkpoint, the previous
    one until the new one is complete, never a mix and never nothing."""
    import torch

    from distilintent.training import checkpoint

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        return model, torch.optim.AdamW(model.parameters())

    model, optimizer = fresh()
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    directory = tmp_path / "m.checkpoints"
    checkpoint.save_checkpoint(directory, model, optimizer, None, {"step": 1})
    with torch.no_grad():
        model.weight.add_(1.0)
    seen: list[int] = []
    problems: list[str] = []

    def observe() -> None:
        try:
            state, best = checkpoint.load_checkpoint(directory, *fresh())
            assert (best is None) == (state["step"] == 1)
            seen.append(state["step"])
        except Exception as err:  # noqa: BLE001 - recorded, asserted below
            problems.append(f"after {len(seen)} complete views: {err!r}")

    def profile(frame, event: str, _arg) -> None:  # after each call made from checkpoint.py
        if event == "c_return" and frame.f_code.co_filename == checkpoint.__file__ or (
                event == "return" and frame.f_back is not None
                and frame.f_back.f_code.co_filename == checkpoint.__file__):
            observe()

    sys.setprofile(profile)
    try:
        checkpoint.save_checkpoint(directory, model, optimizer, model.state_dict(), {"step": 2})
    finally:
        sys.setprofile(None)
    assert problems == []
    assert seen[0] == 1 and seen[-1] == 2 and seen == sorted(seen) and len(seen) > 10
    state, best = checkpoint.load_checkpoint(directory, *fresh())
    assert state["step"] == 2 and torch.equal(best["weight"], model.weight)
    assert len(list(directory.iterdir())) == 4  # state.json and the new model, best and optimizer files only


def test_torchrun_two_processes(tiny_base: Path, tmp_path: Path) -> None:
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"text": e.text, "intent": e.label}) + "\n" for e in toy_examples()))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_train_options(tiny_base, epochs=4)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # --standalone: a c10d rendezvous on a free port (a fixed --master-port collides with parallel runs)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "distilintent", "train", "--data", str(data), "--config", str(config),
               "--output", str(tmp_path / "ddp"), "--device", "cpu", "--no-progress"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = Bundle.open(tmp_path / "ddp")
    assert bundle.manifest["metrics"]["validation"]["accuracy"] >= 0.5  # each rank sees half the batches
    assert bundle.manifest["training"]["epochs"] == 4
    assert bundle.manifest["data"]["counts"] == {"train": 108, "validation": 12, "test": 0}


def test_evaluate_cli_json_and_files(trained: Path, tmp_path: Path) -> None:
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"text": e.text, "intent": e.label, "split": "test"}) + "\n"
                            for e in toy_examples()))
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "distilintent", "evaluate", "--model", str(trained), "--data",
                             str(data), "--backend", "torch", "--json", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 120 and report["accuracy"] == 1.0 and report["macro_f1"] == 1.0  # separable toy data
    assert set(report["per_label"]) == {"book_flight", "goodbye", "greet", "weather"}
    assert (out / "report.json").is_file() and (out / "confusion_matrix.png").stat().st_size > 1000


def test_torch_baseline_runs_the_torch_predictor(trained: Path) -> None:
    """The bench's torch row is TorchPredictor: same top intents and confidences, in input order; its
    ``precision`` casts the weights (fp32 or bf16) and ``threads`` sets torch's threads."""
    import torch

    from distilintent.bench.baselines import TorchClassifier
    from distilintent.core.metrics import softmax
    from distilintent.training.inference import TorchPredictor

    texts = [example.text for example in toy_examples()][::7]  # 18 texts of mixed lengths and labels
    probs = softmax(TorchPredictor.from_bundle(Bundle.open(trained)).logits(texts))
    labels = Bundle.open(trained).labels
    expected = [(labels[row.argmax()], float(row.max())) for row in probs]
    before = torch.get_num_threads()
    try:
        fp32 = TorchClassifier(trained, threads=1)
        assert fp32.detect_batch(texts, batch_size=4) == expected
        one_by_one = [fp32.detect(text) for text in texts]  # batch 1: no padding, equal up to float rounding
        assert [intent for intent, _ in one_by_one] == [intent for intent, _ in expected]
        assert [confidence for _, confidence in one_by_one] == pytest.approx([c for _, c in expected], abs=1e-5)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert [intent for intent, _ in expected] == [example.label for example in toy_examples()][::7]
    bf16 = TorchClassifier(trained, precision="bf16")
    assert {param.dtype for param in bf16.predictor.model.parameters()} == {torch.bfloat16}
    assert [intent for intent, _ in bf16.detect_batch(texts)] == [intent for intent, _ in expected]
    with pytest.raises(ValueError, match="precision must be one of"):
        TorchClassifier(trained, precision="int8")


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,intent\nhi,greet\n")
    result = subprocess.run([sys.executable, "-m", "distilintent", "train", "--data", str(bad), "--output",
                             str(tmp_path / "m")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "CSV header must have 'text' and 'intent'" in result.stderr
    result = subprocess.run([sys.executable, "-m", "distilintent", "evaluate", "--model", str(tmp_path / "none"),
                             "--data", str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "model bundle not found" in result.stderr and "Traceback" not in result.stderr


def test_config_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "train.yml"
    path.write_text("epochs: 7\nlearning_rate: 0.0002\n")
    config = TrainConfig.from_file(path).updated({"epochs": 3, "batch_size": None})
    assert (config.epochs, config.learning_rate, config.batch_size) == (3, 2e-4, 32)
    path.write_text("epoch: 7\n")
    from distilintent.core.errors import DataError

    with pytest.raises(DataError, match=r"unknown training option\(s\) \['epoch'\]"):
        TrainConfig.from_file(path)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        TrainConfig(learning_rate=0)


def test_train_dtype_option_and_the_renamed_precision(tmp_path: Path) -> None:
    """Training's compute dtype is ``dtype``/``--dtype``; ``precision`` (int8/fp32 when serving) is refused by name."""
    import argparse

    from distilintent.commands import train as train_command
    from distilintent.core.errors import DataError

    path = tmp_path / "train.yml"
    path.write_text("dtype: bf16\n")
    assert TrainConfig.from_file(path).dtype == "bf16"
    path.write_text("precision: bf16\n")
    with pytest.raises(DataError, match=r"train\.yml: the training option 'precision' \(--precision\) is now 'dtype' "
                                        r"\(--dtype: auto, fp32 or bf16\)"):
        TrainConfig.from_file(path)
    with pytest.raises(ValueError, match="dtype must be auto, fp32 or bf16"):
        TrainConfig(dtype="int8")
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    visible = {option for action in parser._actions if action.help != argparse.SUPPRESS
               for option in action.option_strings}
    assert visible == {"-h", "--help", "--data", "--output", "-o", "--config", "--base", "--epochs", "--batch-size",
                       "--learning-rate", "--max-length", "--label-smoothing", "--layer-lr-decay", "--rdrop-alpha",
                       "--ood-method", "--oos-label", "--device", "--dtype", "--threads", "--seed", "--ipex",
                       "--resume", "--export", "--no-progress", "--json"}
    with pytest.raises(DataError, match=r"command line: the training option 'precision' \(--precision\) is now"):
        train_command.run(parser.parse_args(["--data", "demo", "--precision", "fp32"]))


def test_calibrate_command_refits_threshold_on_oos_data(trained: Path, tmp_path: Path) -> None:
    import shutil

    bundle_path = Path(shutil.copytree(trained, tmp_path / "bundle"))
    rows = [{"text": e.text, "intent": e.label, "split": "validation"} for e in toy_examples()]
    rows += [{"text": text, "intent": "oos", "split": "validation"}
             for text in ("quantum physics lecture", "my cat is orange", "sell my old car", "tax return forms")]
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = subprocess.run([sys.executable, "-m", "distilintent", "calibrate", "--model", str(bundle_path),
                             "--data", str(data)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    manifest = Bundle.open(bundle_path).manifest
    calibration = manifest["calibration"]
    assert {**calibration, "ood": manifest["ood"]} == json.loads(result.stdout)
    assert manifest["ood"]["examples"] == len(rows)
    assert calibration["examples"] == len(rows)
    assert manifest["ood"]["criterion"] == "max in_scope_accuracy + oos_recall"
    chosen = manifest["ood"]["validation"][manifest["ood"]["method"]]  # the 4 oos texts are caught, no in-scope lost
    assert (chosen["in_scope_accuracy"], chosen["oos_recall"]) == (1.0, 1.0)
    assert calibration["ece_after"] < calibration["ece_before"]


def test_calibration_math() -> None:
    from distilintent.evaluation.calibration import calibrate

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), targets] += 2.0
    logits *= 4.0  # over-confident: temperature scaling must soften it
    truth = [("a", "b", "c")[t] for t in targets]
    calibration = calibrate(logits, truth, ("a", "b", "c"))
    assert calibration["temperature"] > 1.5
    assert calibration["ece_after"] < calibration["ece_before"]
    assert calibration["examples"] == 300


def test_train_export_keeps_fp32_when_int8_is_refused(tiny_base: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    from distilintent.training import export as export_module

    real_export = export_module.export_bundle

    def strict_export(*args, **kwargs):  # no INT8 model can agree with FP32 on 101 % of the texts
        return real_export(*args, **{**kwargs, "min_agreement": 1.01})

    monkeypatch.setattr(export_module, "export_bundle", strict_export)
    config = TrainConfig().updated(tiny_train_options(tiny_base, epochs=2))
    result = train(toy_examples(), config, tmp_path / "m", export=True, progress=False)
    assert sorted(Bundle.open(result.bundle_path).variants) == ["onnx-fp32", "openvino-fp32"]
    assert "INT8 export refused" in caplog.text


def test_layer_lr_decay_scales_groups_by_depth(tiny_base: Path) -> None:
    from distilintent.training.model import IntentModel, load_base
    from distilintent.training.optim import param_groups

    model = IntentModel(load_base(str(tiny_base)).encoder, 3, head_hidden=8)
    groups = param_groups(model, 0.01, layer_lr_decay=0.5)
    scale_of = {id(param): group["lr_scale"] for group in groups for param in group["params"]}
    named = dict(model.named_parameters())
    assert scale_of[id(named["head.0.weight"])] == 1.0
    assert scale_of[id(named["encoder.transformer.layer.1.ffn.lin1.weight"])] == 0.5
    assert scale_of[id(named["encoder.transformer.layer.0.ffn.lin1.weight"])] == 0.25
    assert scale_of[id(named["encoder.embeddings.word_embeddings.weight"])] == 0.125
    assert len(scale_of) == len(named)  # every parameter is in exactly one group
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(named["encoder.embeddings.LayerNorm.weight"]) in no_decay


def test_rdrop_and_layer_decay_still_learn(tiny_base: Path, tmp_path: Path) -> None:
    config = TrainConfig().updated(tiny_train_options(tiny_base, epochs=6, rdrop_alpha=1.0, layer_lr_decay=0.8))
    result = train(toy_examples(), config, tmp_path / "m", progress=False)
    assert result.metrics["best_validation_accuracy"] == 1.0
    assert Bundle.open(result.bundle_path).manifest["training"]["rdrop_alpha"] == 1.0
