"""Sweeps: spec, expansion into run directories, executors (local, Slurm)."""
