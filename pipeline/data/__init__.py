"""Data stage, by flow: ``oxe`` (dataset registry and standardization) -> ``io`` (RLDS/TFRecord
reading and writing) -> ``curate`` (Ray curation: filters, quarantine, statistics) -> ``mixture``
(weights curators edit) -> ``stream`` (the training stream). ``schema`` (the canonical episode) and
``manifest`` (the curated output) are the contracts between stages; ``fixtures`` writes test data."""
