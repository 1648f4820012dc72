"""Where pretrained weights come from: a local path, a ``gs://`` URL, or a model-hub id.

A hub id is ``hf://owner/name`` or a bare ``owner/name`` that is not an existing local path
(e.g. ``openvla/openvla-7b``, ``meta-llama/Llama-2-7b-hf``, ``timm/vit_large_patch14_reg4_dinov2.lvd142m``).
It resolves to a local snapshot folder through ``huggingface_hub`` (downloaded when the hub is
reachable; otherwise what the local Hugging Face cache already holds). No hub: one line saying so.
"""

from __future__ import annotations

import os
import re

from pipeline import fs
from pipeline.errors import UserError

__all__ = ["is_hub_id", "resolve_location"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(url: str) -> bool:
    url = str(url)
    if url.startswith("hf://"):
        return True
    return not fs.is_remote(url) and bool(_HUB_ID.match(url)) and not os.path.exists(url)


def resolve_location(url: str, *, key: str, patterns: list[str] | None = None) -> str:
    """``url`` itself for local paths and remote URLs; the local snapshot folder for a hub id.

    ``key`` names the setting in error messages; ``patterns`` limits which files are fetched."""
    url = str(url)
    if not is_hub_id(url):
        if not fs.is_remote(url) and not os.path.exists(url):
            raise UserError(f"{key}={url}: not found")
        return url
    repo = url[len("hf://"):] if url.startswith("hf://") else url
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - a dependency of transformers
        raise UserError(f"{key}={url}: hub ids need the huggingface_hub package ({e})") from e
    errors = []
    for offline in (False, True):  # the hub first, then the local cache alone
        try:
            return snapshot_download(repo, allow_patterns=patterns, local_files_only=offline)
        except Exception as e:  # noqa: BLE001 - no network, unknown repo, gated repo: all one line
            errors.append(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}")
    raise UserError(f"{key}={url}: not a local path, and the model hub is not reachable or has no such "
                    f"model ({errors[0]}); download it and pass the folder (local or gs://)")
