"""``python -m daskcal``: the ``daskcal`` command."""

import sys

from daskcal.cli import main

if __name__ == "__main__":
    sys.exit(main())
