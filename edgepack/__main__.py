"""`python -m edgepack` runs the edgepack command."""

from edgepack.cli.app import main

main()
