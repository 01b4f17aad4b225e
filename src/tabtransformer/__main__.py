import sys

from tabtransformer.cli import main

sys.exit(main())
