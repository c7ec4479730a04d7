"""Lightning layer: LightningModules and data modules that orchestrate the core."""
