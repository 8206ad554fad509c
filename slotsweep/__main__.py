"""`python -m slotsweep COMMAND ...`: the `slotsweep` console script."""

import sys

from slotsweep.cli import main

sys.exit(main())
