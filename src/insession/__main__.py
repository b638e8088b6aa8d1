"""``python -m insession``: the same command as ``insession``."""

from insession.cli import main

main()
