"""Capability scores: tasks (one per file), checkpoint loading, sandbox, lm-eval adapter."""
