"""``python -m pattern_keras``: the same command line as ``pattern-keras``."""

import sys

from pattern_keras.cli import main

if __name__ == "__main__":
    sys.exit(main())
