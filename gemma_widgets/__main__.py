"""``python -m gemma_widgets``: the command line of :mod:`gemma_widgets.cli`."""

import sys

from gemma_widgets.cli import main

if __name__ == "__main__":
    sys.exit(main())
