"""`python -m reasondistill.train RECIPE.yaml` and `accelerate launch -m reasondistill.train RECIPE.yaml`."""

import sys

from reasondistill.train.train import main

sys.exit(main())
