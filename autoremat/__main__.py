import sys

from autoremat.cli import main

sys.exit(main())
