import sys

from lit_advgame.evaluation.cli import main

sys.exit(main())
