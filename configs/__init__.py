"""The trial configs the named sweeps build on, shipped as `slotsweep.configs` (see
pyproject.toml's package-dir) so that `base: ../configs/NAME.yaml` resolves in a wheel too."""
