import sys

from chexnet.cli import main

sys.exit(main())
