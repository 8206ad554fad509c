"""slotsweep: Ray Tune sweeps for slot-based object-centric models."""

__version__ = "0.1.0"
