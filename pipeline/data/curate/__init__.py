"""``vla curate``: the Ray job that turns raw datasets into curated shards, with its tasks, filters,
quarantine report and mergeable statistics."""
