"""`python -m rlhf_dist ...` is the `rlhf-dist` command."""
import sys

from rlhf_dist.commands.cli import main

sys.exit(main())
