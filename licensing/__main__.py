import sys

from licensing.cli import main

sys.exit(main())
