import sys

from tradewind.trainer.entrypoint import main

sys.exit(main())
