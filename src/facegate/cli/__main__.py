"""`python -m facegate.cli`: the same as the `facegate` command."""

import sys

from facegate.cli import main

sys.exit(main())
