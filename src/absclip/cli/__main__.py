"""``python -m absclip.cli``: the command line (as ``python -m absclip``)."""

import sys

from absclip.cli.main import main

sys.exit(main())
