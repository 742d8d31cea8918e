"""`python -m edgepack.cli` runs the edgepack command."""

from edgepack.cli.app import main

main()
