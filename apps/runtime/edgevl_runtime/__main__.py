import sys

from edgevl_runtime.cli import main

sys.exit(main())
