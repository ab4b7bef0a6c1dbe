import sys

from mlscope.cli import main

sys.exit(main())
