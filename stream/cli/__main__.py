"""``python -m stream.cli``: the ``journey`` command, as the services' child processes start it."""

import sys

from stream.cli import main

sys.exit(main())
