"""``python -m dataplane``: the same as the ``dataplane`` command."""

import sys

from dataplane.cli import main

sys.exit(main())
