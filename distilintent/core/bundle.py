"""The model bundle: a self-describing directory that training writes and every runtime reads.

Layout (paths relative to the bundle)::

    manifest.json            format version, labels in logit order, settings, metrics, sha256 of every file
    tokenizer.json           Hugging Face fast tokenizer (no padding, truncation set from the manifest)
    model/config.json        encoder + head configuration (to continue training)
    model/model.safetensors  fine-tuned weights
    onnx/…, openvino/…       exported runtime variants, listed under ``variants`` in the manifest

Bundles are written to a temporary sibling directory and renamed into place, so an interrupted
write never leaves a directory that looks complete; a bundle already at the path is exchanged with the
new one in a single step on Linux (``renameat2(RENAME_EXCHANGE)``), so a kill at any moment leaves one
complete bundle there, the old or the new. Nothing is pickled.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilintent.core.errors import BundleError

FORMAT = "distilintent-bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
MODEL_CONFIG_FILE = "model/config.json"
WEIGHTS_FILE = "model/model.safetensors"
BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "int8")


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Variant:
    """One exported runtime model in a bundle, e.g. ``openvino-int8``."""

    name: str
    backend: str
    precision: str
    file: str
    weights: str | None = None

    @classmethod
    def from_manifest(cls, name: str, entry: dict[str, Any]) -> Variant:
        try:
            variant = cls(name, entry["backend"], entry["precision"], entry["file"], entry.get("weights"))
        except (KeyError, TypeError) as err:
            raise BundleError(f"manifest variant {name!r} lacks 'backend', 'precision' or 'file'") from err
        if variant.backend not in BACKENDS or variant.precision not in PRECISIONS:
            raise BundleError(
                f"manifest variant {name!r} has backend={variant.backend!r} precision={variant.precision!r}; "
                f"expected one of {BACKENDS} and {PRECISIONS}"
            )
        return variant


class Bundle:
    """A model bundle opened for reading. Validates the manifest; file checksums are checked on read."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Bundle:
        root = Path(path).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"model bundle not found: {root}")
        if not root.is_dir():
            raise BundleError(f"model bundle must be a directory, got a file: {root}")
        manifest_path = root / MANIFEST_FILE
        if not manifest_path.is_file():
            raise BundleError(f"{root} is not a distilintent bundle: {MANIFEST_FILE} is missing")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"{manifest_path} is not valid JSON ({err}); the bundle is corrupt") from err
        validate_manifest(manifest, manifest_path)
        return cls(root, manifest)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.manifest["labels"])

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def oos_label(self) -> str | None:
        return self.manifest.get("oos_label")

    @property
    def calibration(self) -> dict[str, Any]:
        return dict(self.manifest.get("calibration") or {})

    @property
    def variants(self) -> dict[str, Variant]:
        entries = self.manifest.get("variants") or {}
        return {name: Variant.from_manifest(name, entry) for name, entry in entries.items()}

    def file_path(self, relative: str) -> Path:
        if relative not in self.manifest["files"]:
            raise BundleError(f"{self.path}: {relative} is not listed in {MANIFEST_FILE}")
        path = self.path / relative
        if not path.is_file():
            raise BundleError(f"{path} is missing from the bundle (listed in {MANIFEST_FILE})")
        return path

    def read_bytes(self, relative: str) -> bytes:
        """Read a bundle file into memory and check its sha256 against the manifest."""
        data = self.file_path(relative).read_bytes()
        expected = self.manifest["files"][relative]
        if hashlib.sha256(data).hexdigest() != expected:
            raise BundleError(
                f"{self.path / relative} does not match its sha256 in {MANIFEST_FILE}: "
                "the file was changed or truncated; re-export or retrain the bundle"
            )
        return data

    def verify(self) -> None:
        """Check every file's sha256 (slow for large bundles; loading checks only what it reads)."""
        for relative, expected in self.manifest["files"].items():
            if sha256_file(self.file_path(relative)) != expected:
                raise BundleError(f"{self.path / relative} does not match its sha256 in {MANIFEST_FILE}")


def validate_manifest(manifest: Any, where: Path | str) -> None:
    """Raise :class:`BundleError` unless ``manifest`` is a supported, well-formed bundle manifest."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{where} is not a distilintent bundle manifest (no \"format\": \"{FORMAT}\")")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{where} has bundle format_version {version!r}; this distilintent reads version {FORMAT_VERSION}. "
            "Re-export the bundle with this version, or install the distilintent that wrote it "
            f"({manifest.get('package_version', 'unknown')})."
        )
    labels = manifest.get("labels")
    if (
        not isinstance(labels, list)
        or len(labels) < 2
        or not all(isinstance(label, str) and label for label in labels)
        or len(set(labels)) != len(labels)
    ):
        raise BundleError(f"{where}: 'labels' must be a list of at least 2 distinct non-empty strings")
    max_length = manifest.get("max_length")
    if not isinstance(max_length, int) or max_length < 2:
        raise BundleError(f"{where}: 'max_length' must be an integer >= 2, got {max_length!r}")
    if not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{where}: 'files' (sha256 of every file) is missing")
    if TOKENIZER_FILE not in manifest["files"]:
        raise BundleError(f"{where}: the bundle has no {TOKENIZER_FILE}")
    for name, entry in (manifest.get("variants") or {}).items():
        variant = Variant.from_manifest(name, entry)
        if variant.file not in manifest["files"]:
            raise BundleError(f"{where}: variant {name!r} file {variant.file} is not listed in 'files'")
        if entry.get("num_labels", len(labels)) != len(labels):
            raise BundleError(
                f"{where}: variant {name!r} has {entry['num_labels']} outputs but the bundle has "
                f"{len(labels)} labels; the bundle is mismatched"
            )


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a new file (never in place: bundle files may be hard links)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_bundle(target: str | os.PathLike[str], build: Callable[[Path], dict[str, Any]]) -> Path:
    """Create a bundle atomically: ``build(tmp_dir)`` writes its files and returns the manifest fields."""
    target = Path(target)
    _refuse_foreign_directory(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _commit(target, build)
    return target


def update_bundle(path: str | os.PathLike[str], change: Callable[[Path, dict[str, Any]], dict[str, Any]]) -> Path:
    """Change a bundle atomically: files are hard-linked into a copy, ``change(copy, manifest)`` edits it."""
    bundle = Bundle.open(path)
    target = bundle.path

    def copy_and_change(tmp: Path) -> dict[str, Any]:
        for relative in bundle.manifest["files"]:
            dest = tmp / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(target / relative, dest)
            except OSError:
                shutil.copy2(target / relative, dest)
        manifest = {k: v for k, v in bundle.manifest.items() if k not in ("files",)}
        return change(tmp, json.loads(json.dumps(manifest)))

    _commit(target, copy_and_change)
    return target


def _commit(target: Path, fill: Callable[[Path], dict[str, Any]]) -> None:
    """``fill`` a temporary sibling of ``target``, finalise its manifest and swap it into place (or remove it)."""
    tmp = _make_tmp_dir(target)
    try:
        manifest = fill(tmp)
        _finalise(tmp, manifest)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _finalise(root: Path, manifest: dict[str, Any]) -> None:
    from distilintent import __version__

    manifest = dict(manifest)
    manifest["format"] = FORMAT
    manifest["format_version"] = FORMAT_VERSION
    manifest["package_version"] = __version__
    manifest.setdefault("created_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    manifest["updated_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    (root / MANIFEST_FILE).unlink(missing_ok=True)
    manifest["files"] = {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }
    validate_manifest(manifest, root / MANIFEST_FILE)
    write_json(root / MANIFEST_FILE, manifest)


def _make_tmp_dir(target: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is an ordinary directory
    return tmp


def _refuse_foreign_directory(target: Path) -> None:
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST_FILE).exists())):
        raise BundleError(
            f"refusing to replace {target}: it exists and is not a distilintent bundle; choose another --output"
        )


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` to ``target``, replacing the bundle there atomically where the OS can."""
    if not target.exists():
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # it now holds the previous bundle
    else:  # two renames; a failure between them puts the previous bundle back
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / "bundle")
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old / "bundle", target)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # only bundle writers pay for it
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28, some musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # kernel or file system without it
        return False
    raise OSError(code, os.strerror(code), str(b))
