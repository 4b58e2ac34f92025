"""`python -m xps_console` runs the console, as `xps-console` does."""

import sys

from xps_console.cli import main

sys.exit(main())
