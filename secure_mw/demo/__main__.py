"""The demo: ``python -m secure_mw.demo`` (the same as ``secure-mw demo``)."""

import sys

from secure_mw.demo.run import main

if __name__ == "__main__":    # importing the module (pkgutil.walk_packages does) runs nothing
    sys.exit(main())
