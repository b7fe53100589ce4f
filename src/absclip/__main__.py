"""``python -m absclip``: the command line."""

import sys

from absclip.cli.main import main

sys.exit(main())
