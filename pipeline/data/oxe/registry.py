"""The OXE registry: every dataset module's specs, checked once at import."""

from __future__ import annotations

from pipeline.data.oxe import (
    datasets_brief,
    datasets_external,
    datasets_google,
    datasets_other,
    user_registry,
)
from pipeline.data.oxe.spec import REGISTRY, DatasetSpec, register, resolve
from pipeline.errors import UserError

__all__ = ["MAGIC_SOUP_PLUS", "get_spec", "list_datasets"]

# OpenVLA's oxe_magic_soup_plus, in the facts file's order.
MAGIC_SOUP_PLUS = (
    "fractal20220817_data",
    "kuka",
    "bridge_orig",
    "taco_play",
    "jaco_play",
    "berkeley_cable_routing",
    "roboturk",
    "viola",
    "berkeley_autolab_ur5",
    "toto",
    "language_table",
    "stanford_hydra_dataset_converted_externally_to_rlds",
    "austin_buds_dataset_converted_externally_to_rlds",
    "nyu_franka_play_dataset_converted_externally_to_rlds",
    "furniture_bench_dataset_converted_externally_to_rlds",
    "ucsd_kitchen_dataset_converted_externally_to_rlds",
    "austin_sailor_dataset_converted_externally_to_rlds",
    "austin_sirius_dataset_converted_externally_to_rlds",
    "dlr_edan_shared_control_converted_externally_to_rlds",
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds",
    "utaustin_mutex",
    "berkeley_fanuc_manipulation",
    "cmu_stretch",
    "bc_z",
    "fmb_dataset",
    "dobbe",
    "droid",
)


def _load() -> None:
    register(*datasets_google.SPECS, *datasets_external.SPECS, *datasets_brief.SPECS, *datasets_other.SPECS)
    flagged = {name for name, spec in REGISTRY.items() if spec.in_magic_soup_plus}
    if flagged != set(MAGIC_SOUP_PLUS):
        raise AssertionError(
            f"in_magic_soup_plus flags disagree with MAGIC_SOUP_PLUS: {flagged ^ set(MAGIC_SOUP_PLUS)}"
        )


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name`` (or an alias); UserError with close-name suggestions if unknown.

    Built-in names first; otherwise a user entry (``pipeline.data.oxe.user_registry``)."""
    try:
        return resolve(name)
    except UserError:
        spec = user_registry.user_spec(name)
        if spec is not None:
            return spec
        close = user_registry.close_user_names(name)
        if close:
            raise UserError(f"unknown dataset {name!r}; did you mean {', '.join(map(repr, close))}? "
                            "(see `vla dataset list`)") from None
        raise


def list_datasets(mixture_only: bool = False, *, user: bool = True) -> list[str]:
    """Registered dataset names (aliases excluded): built-in plus user entries (``user=False``: built-in
    only); ``mixture_only``: the 27 of oxe_magic_soup_plus."""
    if mixture_only:
        return list(MAGIC_SOUP_PLUS)
    return sorted({*REGISTRY, *(user_registry.user_datasets() if user else ())} - set(_builtin_aliases()))


def _builtin_aliases() -> list[str]:
    return [a for spec in REGISTRY.values() for a in spec.aliases]


_load()
