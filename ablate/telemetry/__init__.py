"""Telemetry: metric loggers behind one interface, per-domain accounting, routing capture."""
