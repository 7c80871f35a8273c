"""``python -m simcluster SCENARIO``."""

import sys

from simcluster.cli import main

sys.exit(main(prog="python -m simcluster"))
