"""`python -m xps_server` runs the headless server."""

import sys

from xps_server.cli import main

sys.exit(main())
