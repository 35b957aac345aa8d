"""Training objectives: (model, batch) → loss and the per-example terms that are logged."""
