"""``python -m megatron_truncdistill.quickstart``: see quickstart/run.py."""

import sys

from megatron_truncdistill.quickstart.run import main

sys.exit(main())
