"""`python -m takeover`: the same as `pcidevices-takeover`."""

import sys

from takeover.command import main

sys.exit(main())
