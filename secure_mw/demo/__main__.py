"""The demo: ``python -m secure_mw.demo`` (the same as ``secure-mw demo``)."""

import sys

from secure_mw.demo.run import main

sys.exit(main())
