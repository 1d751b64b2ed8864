"""Hub ids ("google/ddpm-cifar10-32") resolved to a local snapshot folder through huggingface_hub.

Online, the snapshot is downloaded (configs and one weights format only); offline (HF_HUB_OFFLINE=1, or when
the download fails) it comes from the local cache, laid out as huggingface_hub lays it out:
``$HF_HUB_CACHE/models--owner--name/{refs/main, snapshots/<commit>/...}``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fastddpm.checkpoints.files import CheckpointError

# owner/name as the Hub allows them (letters, digits, - _ .), optionally @revision.
_HUB_ID = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[\w./-]+))?$"
)
_CONFIGS = ["*.json"]
_WEIGHTS = {"safetensors": ["*diffusion_pytorch_model.safetensors"], "bin": ["*diffusion_pytorch_model.bin"]}


# A missing "dir/model.ckpt" is a missing file, not a Hub id.
_FILE_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin", ".safetensors", ".json")


def looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and ".." not in text and not text.lower().endswith(_FILE_SUFFIXES)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _first_sentence(text: str, limit: int = 200) -> str:
    """The first sentence of an exception's message on one line, cut at a word (with "...") past ``limit``:
    huggingface_hub's messages run on with advice that does not fit one line."""
    text = " ".join(text.split())
    end = text.find(". ")
    if end >= 0:
        text = text[: end + 1]
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def resolve_hub_id(hub_id: str) -> Path:
    """The local snapshot folder of ``owner/name[@revision]``; CheckpointError when it cannot be had."""
    match = _HUB_ID.match(hub_id)
    if not match:
        raise CheckpointError(f"{hub_id}: not an existing path and not a Hub id of the form owner/name")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise CheckpointError(
            f"{hub_id}: not an existing path, and huggingface_hub is not installed to resolve it as a Hub id"
        ) from exc
    repo, revision = match["repo"], match["revision"]
    # Read at call time: huggingface_hub reads these variables once, when it is first imported.
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    endpoint = os.environ.get("HF_ENDPOINT") or None
    offline = _env_flag("HF_HUB_OFFLINE")

    def fetch(patterns: list[str], local_only: bool) -> Path:
        return Path(
            snapshot_download(
                repo,
                revision=revision,
                cache_dir=cache_dir,
                endpoint=endpoint,
                allow_patterns=patterns,
                local_files_only=local_only,
            )
        )

    errors = []
    for local_only in (True,) if offline else (False, True):
        try:
            folder = fetch(_CONFIGS, local_only)
            # One weights format: safetensors when the repository has it, else the pickled .bin.
            if not any(folder.rglob("diffusion_pytorch_model.safetensors")):
                fetch(_CONFIGS + _WEIGHTS["safetensors"], local_only)
            if not any(folder.rglob("diffusion_pytorch_model.safetensors")):
                fetch(_CONFIGS + _WEIGHTS["bin"], local_only)
            return folder
        except Exception as exc:  # network errors online, a cache miss offline
            errors.append(f"{type(exc).__name__}: {_first_sentence(str(exc))}")
    where = "the local Hub cache (offline)" if offline else "the Hub or the local Hub cache"
    raise CheckpointError(f"{hub_id}: not an existing path, and not found in {where} ({'; '.join(errors)})")
