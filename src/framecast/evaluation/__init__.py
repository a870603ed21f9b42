"""Quality evaluation of a model on the procedural world: adherence, temporal consistency, drift, switch latency."""
