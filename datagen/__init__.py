"""datagen: scene specs, camera math, trajectories, render orchestration and the dataset format (numpy only)."""
__version__ = "0.1.0"
