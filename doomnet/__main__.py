import sys

from doomnet.cli import main

sys.exit(main())
