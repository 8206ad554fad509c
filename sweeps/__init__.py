"""The named sweeps, shipped inside the package as `slotsweep.sweeps` (see pyproject.toml's
package-dir) so that a wheel install finds them; `slotsweep.shipped` looks them up."""
