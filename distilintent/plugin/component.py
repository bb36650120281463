"""``DistilIntentClassifier``: a Rasa 3 intent classifier backed by a distilintent bundle.

Use it in ``config.yml`` as ``- name: distilintent.plugin.DistilIntentClassifier``. It tokenizes by
itself (no Rasa tokenizer or featurizer is needed before it) and sets ``intent`` and
``intent_ranking`` on every message, like Rasa's own classifiers. Two modes:

- **prebuilt bundle** (``model_path: path/to/bundle``): ``rasa train`` only checks the bundle, warns
  when its labels and the assistant's intents differ, and packs it into the model archive.
- **train inside Rasa** (no ``model_path``): ``rasa train`` fine-tunes on the assistant's NLU data with
  :func:`distilintent.training.train` (needs ``pip install 'distilintent[train]'``), exports it and packs
  the bundle.

Either way the archive holds the bundle's runtime files (tokenizer, manifest and the exported
ONNX/OpenVINO variants that match ``backend``/``precision``; never a pickle), and ``load`` reads them
into memory, because Rasa deletes the unpacked model directory right after loading.

Multi-intents such as ``greet+ask_weather`` are classes of their own, as in Rasa's other classifiers.
Do not rename this module: Rasa stores ``distilintent.plugin.component.DistilIntentClassifier`` in
every trained model's metadata.
"""

# Rasa checks these annotations at runtime with ``typing_utils`` against its own ``typing.List`` ones.
# ruff: noqa: UP006, UP035

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.classifiers.classifier import IntentClassifier
from rasa.shared.exceptions import InvalidConfigException
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

from distilintent.core.bundle import MANIFEST_FILE, WEIGHTS_FILE, Bundle, sha256_file, write_json
from distilintent.core.data import Example
from distilintent.core.errors import BundleError, MissingExtraError

logger = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"
LEGACY_SAMPLES = "samples/"  # training texts inside bundles written before they moved next to the bundle
BACKENDS = ("auto", "onnxruntime", "openvino")
PRECISIONS = ("auto", "int8", "fp32")
# Options handed to distilintent's TrainConfig in train-inside-Rasa mode (None: its default).
TRAIN_OPTIONS = ("base", "epochs", "batch_size", "learning_rate", "max_length", "device", "seed")
EXPORT_FORMATS = ("onnx", "openvino")
# Set by Rasa itself for `rasa train --finetune`: accepted, not an error.
RASA_ADDED_OPTIONS = ("finetuning_epoch_fraction",)


@DefaultV1Recipe.register([DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER], is_trainable=True)
class DistilIntentClassifier(GraphComponent, IntentClassifier):
    """Intent classification with a fine-tuned DistilBERT served by ONNX Runtime or OpenVINO."""

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        return {
            # A prebuilt bundle to pack (relative to where `rasa` runs); None trains one inside Rasa.
            "model_path": None,
            # Serving.
            "backend": "auto",  # auto | onnxruntime | openvino
            "precision": "auto",  # auto | int8 | fp32
            "threads": None,  # inference threads (None: the runtime's default)
            "ranking_length": 10,  # intents in intent_ranking; 0 keeps all
            "fallback_threshold": None,  # None: the bundle's calibrated threshold, if any
            "fallback_intent_name": "nlu_fallback",
            # Train-inside-Rasa mode only. None takes distilintent's default (TrainConfig).
            "base": None,  # minilm (default), a Hugging Face DistilBERT dir, or a bundle to continue from
            "epochs": None,
            "batch_size": None,
            "learning_rate": None,
            "max_length": None,
            "device": None,  # auto | cpu | cuda | xpu
            "seed": None,
            "training": {},  # any other TrainConfig option, e.g. {warmup_ratio: 0.1}
            "export_formats": list(EXPORT_FORMATS),
            # Also export INT8 variants (the fastest). Off by default: it fails beside Rasa 3.6's pins
            # (see docs/rasa.md); turn it on where the training stack is recent (e.g. Rasa Pro).
            "export_int8": False,
        }

    @staticmethod
    def required_packages() -> List[str]:
        # Imported by name and looked up as distributions by Rasa: only what is always installed.
        return ["distilintent", "numpy", "tokenizers", "onnxruntime"]

    @classmethod
    def fingerprint_addon(cls, config: Dict[str, Any]) -> str | None:
        """A hash of the prebuilt bundle (its manifest holds every file's sha256) or of a local base model."""
        path = config.get("model_path") or config.get("base")
        if not path or not isinstance(path, str):
            return None
        root = Path(path).expanduser()
        manifest = root / MANIFEST_FILE
        if manifest.is_file():
            return "bundle:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
        if root.is_dir():  # a Hugging Face model directory: names, sizes and times of its files
            digest = hashlib.sha256()
            for item in sorted(p for p in root.rglob("*") if p.is_file()):
                stat = item.stat()
                digest.update(f"{item.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
            return "dir:" + digest.hexdigest()
        return f"missing:{root}" if config.get("model_path") else None

    @classmethod
    def validate_config(cls, config: Dict[str, Any]) -> None:
        """Raise :class:`InvalidConfigException` naming the option, its value and what is expected."""
        known = set(cls.get_default_config()) | set(RASA_ADDED_OPTIONS)
        unknown = sorted(set(config) - known)
        if unknown:
            raise InvalidConfigException(
                f"{cls.__name__}: unknown option(s) {unknown}; known options: {sorted(known - set(RASA_ADDED_OPTIONS))}"
            )

        def fail(key: str, expected: str) -> None:
            raise InvalidConfigException(f"{cls.__name__}: option '{key}' is {config[key]!r}; expected {expected}")

        if config["model_path"] is not None and not isinstance(config["model_path"], str):
            fail("model_path", "a path to a distilintent bundle, or null to train inside Rasa")
        if config["backend"] not in BACKENDS:
            fail("backend", f"one of {list(BACKENDS)}")
        if config["precision"] not in PRECISIONS:
            fail("precision", f"one of {list(PRECISIONS)}")
        threads = config["threads"]
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            fail("threads", "a positive integer or null")
        length = config["ranking_length"]
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            fail("ranking_length", "an integer >= 0 (0 keeps every intent)")
        threshold = config["fallback_threshold"]
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not 0 <= threshold <= 1):
            fail("fallback_threshold", "a number between 0 and 1, or null for the bundle's")
        if not isinstance(config["fallback_intent_name"], str) or not config["fallback_intent_name"]:
            fail("fallback_intent_name", "a non-empty string")
        if not isinstance(config["training"], dict):
            fail("training", "a mapping of distilintent training options")
        formats = config["export_formats"]
        if not isinstance(formats, list) or not formats or not set(formats) <= set(EXPORT_FORMATS):
            fail("export_formats", f"a non-empty list out of {list(EXPORT_FORMATS)}")
        if not isinstance(config["export_int8"], bool):
            fail("export_int8", "true or false")

    def __init__(self, config: Dict[str, Any], name: str, model_storage: ModelStorage, resource: Resource,
                 detector: Any = None) -> None:
        self.name = name
        self.config = {**self.get_default_config(), **config}
        self.validate_config(self.config)
        self._model_storage = model_storage
        self._resource = resource
        self._detector = detector
        self._warned_untrained = False

    @classmethod
    def create(cls, config: Dict[str, Any], model_storage: ModelStorage, resource: Resource,
               execution_context: ExecutionContext) -> DistilIntentClassifier:
        return cls(config, execution_context.node_name, model_storage, resource)

    @classmethod
    def load(cls, config: Dict[str, Any], model_storage: ModelStorage, resource: Resource,
             execution_context: ExecutionContext, **kwargs: Any) -> DistilIntentClassifier:
        """Read the packed bundle into memory. A resource that exists but does not load raises."""
        component = cls(config, execution_context.node_name, model_storage, resource)
        with contextlib.ExitStack() as stack:
            try:
                directory = stack.enter_context(model_storage.read_from(resource))
            except ValueError:
                # Nothing was persisted: training had no intent examples (Rasa's convention: untrained).
                logger.debug("%s: no persisted model for resource %r; it stays untrained", cls.__name__,
                             resource.name)
                return component
            component._detector = component._open_detector(Path(directory) / BUNDLE_DIR)
        return component

    # -- training ---------------------------------------------------------------------------------------

    def train(self, training_data: TrainingData) -> Resource:
        """Pack the prebuilt bundle, or fine-tune one on the NLU data; then persist it."""
        intents = sorted({example.get("intent") for example in training_data.intent_examples} - {None})
        if self.config["model_path"] is not None:
            bundle = self._check_prebuilt(intents)
            self._persist(bundle)
            return self._resource
        examples = [
            Example(message.get("text"), message.get("intent"))
            for message in training_data.intent_examples
            if isinstance(message.get("text"), str) and message.get("text").strip()
        ]
        if not examples:
            logger.warning("%s: the training data has no intent examples; the classifier stays untrained",
                           type(self).__name__)
            return self._resource
        # The bundle's sibling bundle.samples/ (training texts) stays in the scratch directory, deleted here.
        with tempfile.TemporaryDirectory(prefix="distilintent-rasa-") as scratch:
            bundle = self._train_bundle(examples, Path(scratch) / "bundle")
            self._persist(bundle)
        return self._resource

    def _check_prebuilt(self, intents: List[str]) -> Bundle:
        path = Path(self.config["model_path"]).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"{type(self).__name__}: model_path {self.config['model_path']!r} does not exist "
                f"(relative paths start from {Path.cwd()}, where rasa runs)"
            )
        bundle = Bundle.open(path)
        labels = set(bundle.labels)
        missing = [intent for intent in intents if intent not in labels]
        extra = sorted(labels - set(intents))
        if missing:
            warnings.warn(
                f"{type(self).__name__}: the bundle {bundle.path} cannot predict the intent(s) {missing} of "
                "the training data; retrain the bundle on this data or drop them", UserWarning, stacklevel=2,
            )
        if extra and intents:
            warnings.warn(
                f"{type(self).__name__}: the bundle {bundle.path} predicts intent(s) {extra} that the training "
                "data does not have; add them to the domain (and stories or rules) or retrain the bundle",
                UserWarning, stacklevel=2,
            )
        return bundle

    def _train_bundle(self, examples: List[Example], output: Path) -> Bundle:
        try:
            from distilintent.training import TrainConfig, train
            from distilintent.training.export import export_bundle
        except MissingExtraError as err:
            raise MissingExtraError(
                f"{type(self).__name__} has no model_path, so it trains inside Rasa, which needs the [train] "
                f"extra in Rasa's environment ({err}); or set model_path to a bundle trained elsewhere"
            ) from err
        options = {key: self.config[key] for key in TRAIN_OPTIONS if self.config[key] is not None}
        options.update(self.config["training"])
        config = TrainConfig().updated(options, source=f"{type(self).__name__} options")
        logger.info("%s: fine-tuning on %d examples with %s", type(self).__name__, len(examples), config)
        result = train(examples, config, output=output, export=False)
        export_bundle(result.bundle_path, formats=tuple(self.config["export_formats"]),
                      int8=self.config["export_int8"])
        return Bundle.open(result.bundle_path)

    def _persist(self, bundle: Bundle) -> None:
        """Copy the runtime files (no training weights) of the variants matching backend/precision.

        Only files the manifest lists are copied, so the texts training keeps next to the bundle
        (``<bundle>.samples/``) never reach the archive; nor do the ``samples/`` of older bundles."""
        variants = {
            name: variant for name, variant in bundle.variants.items()
            if self.config["backend"] in ("auto", variant.backend)
            and self.config["precision"] in ("auto", variant.precision)
        }
        if not variants:
            have = sorted(bundle.variants) or "none"
            raise BundleError(
                f"{bundle.path} has no exported variant for backend={self.config['backend']!r} "
                f"precision={self.config['precision']!r} (it has: {have}); run: distilintent export --model "
                f"{bundle.path}"
            )
        variant_files = {f for v in bundle.variants.values() for f in (v.file, v.weights) if f}
        kept_files = {f for v in variants.values() for f in (v.file, v.weights) if f}
        files = {
            relative: digest for relative, digest in bundle.manifest["files"].items()
            if relative != WEIGHTS_FILE and not relative.startswith(LEGACY_SAMPLES)
            and (relative not in variant_files or relative in kept_files)
        }
        manifest = {key: value for key, value in bundle.manifest.items() if key != "samples"}
        manifest["files"] = files
        manifest["variants"] = {name: bundle.manifest["variants"][name] for name in variants}
        with self._model_storage.write_to(self._resource) as directory:
            target = Path(directory) / BUNDLE_DIR
            for relative, digest in files.items():
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(bundle.file_path(relative), target / relative)
                if sha256_file(target / relative) != digest:
                    raise BundleError(
                        f"{bundle.path / relative} does not match its sha256 in {MANIFEST_FILE}: the file was "
                        "changed or truncated; re-export or retrain the bundle"
                    )
            write_json(target / MANIFEST_FILE, manifest)
            self._detector = self._open_detector(target)
        logger.debug("%s: packed %s (%s) into resource %r", type(self).__name__, bundle.path,
                     ", ".join(sorted(variants)), self._resource.name)

    def _open_detector(self, path: Path) -> Any:
        from distilintent.sdk import IntentDetector

        length = self.config["ranking_length"]
        return IntentDetector(
            path,
            backend=self.config["backend"],
            precision=self.config["precision"],
            threads=self.config["threads"],
            fallback_threshold=self.config["fallback_threshold"],
            fallback_intent=self.config["fallback_intent_name"],
            top_k=length if length > 0 else None,
        )

    # -- inference ----------------------------------------------------------------------------------------

    def process(self, messages: List[Message]) -> List[Message]:
        """Set ``intent`` and ``intent_ranking`` on every message with a text, all in one batch."""
        if self._detector is None:
            if not self._warned_untrained:
                logger.warning("%s is not trained (no intent examples); it predicts no intent", type(self).__name__)
                self._warned_untrained = True
            return messages
        todo = [message for message in messages if isinstance(message.get("text"), str)]
        if not todo:
            return messages
        results = self._detector.detect_batch([message.get("text") for message in todo])
        for message, result in zip(todo, results, strict=True):
            parse = result.to_rasa()
            message.set("intent", parse["intent"], add_to_output=True)
            message.set("intent_ranking", parse["intent_ranking"], add_to_output=True)
        return messages

    @property
    def labels(self) -> tuple[str, ...]:
        """The intents the packed model predicts (empty while untrained)."""
        return tuple(self._detector.labels) if self._detector is not None else ()
