import sys

from lxdmig.cli import main

sys.exit(main())
