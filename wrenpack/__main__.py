import sys

from wrenpack.cli import main

sys.exit(main())
