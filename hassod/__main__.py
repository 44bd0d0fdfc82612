import sys

from hassod.cli import main

sys.exit(main())
