import sys

from dgh_deploy.cli import main

sys.exit(main())
