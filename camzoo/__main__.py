"""``python -m camzoo`` runs the command line."""

from .cli import main

main()
