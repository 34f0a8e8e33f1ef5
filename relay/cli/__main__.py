"""``python -m relay.cli``: the same as ``quickslot-relay``."""

import sys

from relay.cli.commands import main

sys.exit(main())
