import sys

from gunicorn_companion.cli import main

sys.exit(main())
