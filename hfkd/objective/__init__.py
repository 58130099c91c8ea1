"""The training objective: loss functions, the registry of named terms, layer maps, width projections,
relations, and the weights over time (stages, schedules, presets)."""
