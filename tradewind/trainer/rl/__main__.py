import sys

from tradewind.trainer.rl.run import main

sys.exit(main())
