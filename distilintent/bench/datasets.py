"""CLINC150 and BANKING77 as JSONL (``text``, ``intent``, ``split``), downloaded and checksum-verified on demand.

    dataset_path("clinc150", data_dir, download=True)  # → data_dir/clinc150/clinc150.jsonl

The raw files are fetched from commit-pinned GitHub URLs, checked against the sha256 below, kept
beside the JSONL (so a later call converts without downloading) and converted exactly as the copies
in ``../shared/data`` were made (same lines, same order, same bytes):

- CLINC150 (``clinc/oos-eval``, ``data/data_full.json``, "Full" setting): ``train`` + ``oos_train`` →
  ``train``, ``val`` + ``oos_val`` → ``validation``, ``test`` + ``oos_test`` → ``test``, in that
  order; out-of-scope texts keep the label ``oos``. CC BY 3.0.
- BANKING77 (``PolyAI-LDN/task-specific-datasets``, ``banking_data/{train,test}.csv``): ``category``
  → ``intent``, split from the file, train first. There is no official validation split and none is
  made (training holds one out itself). CC BY 4.0.

No text normalisation anywhere (no stripping, case folding or deduplication).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distilintent.core.errors import DataError

CLINC150_COMMIT = "828f8093932c8fe6ca7936c3d2e52903b1c523de"
BANKING77_COMMIT = "57ec275d8078af65b7731c2a98be812d844a6d6b"


@dataclass(frozen=True)
class RawFile:
    """One published file: where it is fetched from and its sha256."""

    name: str
    url: str
    sha256: str


@dataclass(frozen=True)
class Dataset:
    name: str
    files: tuple[RawFile, ...]
    convert: Callable[[Path], list[dict[str, str]]]
    license: str


def _clinc150_rows(raw_dir: Path) -> list[dict[str, str]]:
    data = json.loads((raw_dir / "data_full.json").read_text(encoding="utf-8"))
    rows = []
    for key, split in (("train", "train"), ("oos_train", "train"), ("val", "validation"), ("oos_val", "validation"),
                       ("test", "test"), ("oos_test", "test")):
        rows += [{"text": text, "intent": intent, "split": split} for text, intent in data[key]]
    return rows


def _banking77_rows(raw_dir: Path) -> list[dict[str, str]]:
    rows = []
    for split in ("train", "test"):
        with (raw_dir / f"{split}.csv").open(newline="", encoding="utf-8") as handle:
            rows += [{"text": row["text"], "intent": row["category"], "split": split} for row in csv.DictReader(handle)]
    return rows


DATASETS: dict[str, Dataset] = {
    "clinc150": Dataset(
        "clinc150",
        (RawFile("data_full.json",
                 f"https://raw.githubusercontent.com/clinc/oos-eval/{CLINC150_COMMIT}/data/data_full.json",
                 "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0"),),
        _clinc150_rows,
        "CC BY 3.0 (Larson et al. 2019)",
    ),
    "banking77": Dataset(
        "banking77",
        tuple(RawFile(f"{split}.csv", "https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/"
                                      f"{BANKING77_COMMIT}/banking_data/{split}.csv", digest)
              for split, digest in (("train", "b06e26ac675513959a63135f11b94ea7786ed02da65db93a5650d8838cbc664b"),
                                    ("test", "d12d6e3bc4c3103966ae786dc435913c0c563dfa328f5a3646d0e62cfeeb474d"))),
        _banking77_rows,
        "CC BY 4.0 (Casanueva et al. 2020)",
    ),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(raw: RawFile, dest: Path, timeout: float = 60.0) -> Path:
    """Download ``raw`` to ``dest`` via a temporary file and verify its sha256; a mismatch raises, keeps nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{raw.name}.", dir=dest.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                with urllib.request.urlopen(raw.url, timeout=timeout) as response:  # noqa: S310 - pinned URLs
                    shutil.copyfileobj(response, out)
            except OSError as err:
                raise DataError(f"cannot download {raw.url}: {err}") from err
        check_sha256(Path(temporary), raw, source=raw.url)
        os.replace(temporary, dest)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return dest


def check_sha256(path: Path, raw: RawFile, source: str | None = None) -> None:
    actual = sha256_of(path)
    if actual != raw.sha256:
        raise DataError(f"checksum mismatch for {source or path}: sha256 {actual}, expected {raw.sha256} "
                        f"({raw.name}); the file is corrupt or not the published version")


def to_jsonl(rows: list[dict[str, str]]) -> bytes:
    """One ``{"text", "intent", "split"}`` object per line, UTF-8 as-is (the format of ``../shared/data``)."""
    out = io.StringIO()
    for row in rows:
        out.write(json.dumps({"text": row["text"], "intent": row["intent"], "split": row["split"]},
                             ensure_ascii=False) + "\n")
    return out.getvalue().encode("utf-8")


def dataset_path(name: str, data_dir: str | os.PathLike[str], download: bool = False) -> Path:
    """``data_dir/<name>/<name>.jsonl``; made from the raw files when absent (downloaded if ``download``).

    Raw files already in ``data_dir/<name>/`` are checksum-verified before conversion; missing ones are
    downloaded only with ``download=True``, otherwise a :class:`DataError` says how to get them.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose from {sorted(DATASETS)}")
    dataset = DATASETS[name]
    folder = Path(data_dir) / name
    target = folder / f"{name}.jsonl"
    if target.is_file():
        return target
    missing = [raw for raw in dataset.files if not (folder / raw.name).is_file()]
    if missing and not download:
        raise DataError(f"{target} does not exist and neither do the raw files {[raw.name for raw in missing]}: "
                        f"pass --download to fetch them ({', '.join(raw.url for raw in missing)})")
    for raw in dataset.files:
        path = folder / raw.name
        if raw in missing:
            fetch(raw, path)
        else:
            check_sha256(path, raw)
    data = to_jsonl(dataset.convert(folder))
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)
    return target
