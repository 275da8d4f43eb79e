"""``python -m stackmap``: the same command as the ``stackmap`` console script."""

from stackmap.cli import main

main()
