import sys

from mlscope.cli.main import main

sys.exit(main())
