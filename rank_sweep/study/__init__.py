"""The Optuna study that runs the recipe: the pure plan, the sampler and its claims, workers, storage,
the objective, the run loop and the report."""
