import sys

from lxdmig.helper.cli import main

sys.exit(main())
