"""``python -m camzoo`` runs the command line (Ctrl-C while it starts up exits 130 too, not with a traceback)."""

import sys

try:
    from .cli import run
except KeyboardInterrupt:  # before the command line's own handling exists
    print("\ninterrupted (Ctrl-C)", file=sys.stderr)
    sys.exit(130)

run()
