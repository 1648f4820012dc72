"""Curation filters: pure predicates over raw or canonical episodes, each switchable and counted.

Every filter returns ``None`` to keep an episode or a short reason string to drop it; the curation
task counts every drop by reason (see ``pipeline.data.curate.quarantine``). Order inside
:func:`check_episode`: non-finite values, too short, action magnitude, empty instruction,
undecodable images. Registry filters (``spec.episode_filters`` on the raw episode, before
statistics; ``spec.frame_filter`` on the curated episode and its action normalized with the final
statistics) are applied by :func:`registry_episode_filters` / :func:`apply_frame_filter`.

Reasons: ``nan_inf``, ``too_short``, ``action_magnitude``, ``empty_instruction``,
``undecodable_image``, ``invalid_schema``, ``standardize_error``, ``corrupt_record`` (CRC mismatch,
truncation), ``missing_feature`` / ``invalid_record`` (a record without a declared feature or not
matching its shape; examples name file and record index), plus the
registry's own names (e.g. ``kuka_success``) and ``<frame filter>_all_frames`` when a frame filter
drops every step.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from pipeline.config import helpfield
from pipeline.data.schema import IMAGE_KEYS

__all__ = [
    "FilterConfig",
    "check_episode",
    "registry_episode_filters",
    "apply_frame_filter",
    "has_nan_inf",
    "undecodable_image",
]


@dataclass(kw_only=True)
class FilterConfig:
    """Which filters run (all counted). Defaults follow OpenVLA where it has an equivalent."""

    registry_filters: bool = helpfield(True, "dataset-specific episode filters of the registry (e.g. kuka success)")
    frame_filter: bool = helpfield(True, "dataset-specific frame filter of the registry (DROID idle frames)")
    drop_empty_instruction: bool = helpfield(True, "drop episodes without any instruction (OpenVLA skip_unlabeled)")
    drop_nan_inf: bool = helpfield(True, "drop episodes with NaN/Inf in action or proprio")
    max_abs_action: float = helpfield(100.0, "drop episodes whose |movement action| (dims 0-5) exceeds this; <= 0 = off")
    min_steps: int = helpfield(1, "drop episodes with fewer steps (after standardization and frame filter)")
    check_images: bool = helpfield(True, "try-decode images with PIL; drop undecodable episodes")
    image_check_frames: int = helpfield(1, "frames per camera to decode (first, last, evenly spaced)")

    def __post_init__(self) -> None:
        if self.min_steps < 0:
            raise ValueError(f"filters.min_steps must be >= 0, got {self.min_steps}")
        if self.image_check_frames < 0:
            raise ValueError(f"filters.image_check_frames must be >= 0, got {self.image_check_frames}")


def has_nan_inf(ep: dict) -> bool:
    steps = ep["steps"]
    return any(not np.isfinite(np.asarray(steps[k], np.float64)).all() for k in ("action", "proprio"))


def _probe_indices(t: int, n: int) -> list[int]:
    if n <= 0 or t == 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, t - 1, num=min(n, t))})


def undecodable_image(ep: dict, frames: int = 1) -> str | None:
    """Name of the first image key whose probed frames PIL cannot decode (b"" = missing: fine)."""
    from PIL import Image

    steps = ep["steps"]
    for key in IMAGE_KEYS:
        column = steps[key]
        for i in _probe_indices(len(column), frames):
            data = bytes(column[i])
            if not data:
                continue
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
            except Exception:
                return key
    return None


def check_episode(ep: dict, cfg: FilterConfig) -> str | None:
    """Drop reason for a canonical episode, or None to keep it."""
    steps = ep["steps"]
    if cfg.drop_nan_inf and has_nan_inf(ep):
        return "nan_inf"
    if len(steps["action"]) < max(cfg.min_steps, 1):
        return "too_short"
    if cfg.max_abs_action > 0:
        movement = np.abs(np.asarray(steps["action"], np.float64)[:, :6])
        if movement.size and float(np.nanmax(movement)) > cfg.max_abs_action:
            return "action_magnitude"
    if cfg.drop_empty_instruction and not any(s.strip() for s in steps["language_instruction"]):
        return "empty_instruction"
    if cfg.check_images and undecodable_image(ep, cfg.image_check_frames):
        return "undecodable_image"
    return None


def registry_episode_filters(raw: dict, spec, cfg: FilterConfig) -> str | None:
    """Reason of the first registry episode filter that rejects ``raw`` (None = keep)."""
    if not cfg.registry_filters:
        return None
    for reason, keep in spec.episode_filters:
        if not keep(raw):
            return str(reason)
    return None


def _take(steps: dict, keep: np.ndarray) -> dict:
    return {k: (_take(v, keep) if isinstance(v, dict) else np.asarray(v)[keep]) for k, v in steps.items()}


def apply_frame_filter(ep: dict, spec, cfg: FilterConfig,
                       normalized_action: np.ndarray | None) -> tuple[dict | None, int, str]:
    """Apply ``spec.frame_filter`` to ``ep`` whose action normalizes (with the dataset's final
    statistics) to ``normalized_action``: ``(episode or None if nothing is left, frames dropped, reason)``.

    The step flags are recomputed so that the kept steps still start with ``is_first`` and end with
    ``is_last`` (``is_terminal`` of the last kept step follows the original last step).
    """
    if not cfg.frame_filter or spec.frame_filter is None:
        return ep, 0, ""
    reason, fn = spec.frame_filter
    keep = np.asarray(fn(ep, normalized_action), bool)
    dropped = int((~keep).sum())
    if dropped == 0:
        return ep, 0, str(reason)
    if not keep.any():
        return None, dropped, str(reason)
    terminal_last = bool(np.asarray(ep["steps"]["is_terminal"])[-1])
    steps = _take(ep["steps"], keep)
    n = int(keep.sum())
    steps["is_first"] = np.arange(n) == 0
    steps["is_last"] = np.arange(n) == n - 1
    steps["is_terminal"] = steps["is_last"] & terminal_last
    return {**ep, "steps": steps}, dropped, str(reason)
