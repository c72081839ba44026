import sys

from meterline.app.cli import main

sys.exit(main())
