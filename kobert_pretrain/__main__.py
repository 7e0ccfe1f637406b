"""`python -m kobert_pretrain` is the `kobert-pretrain` command."""

import sys

from kobert_pretrain.cli import main

sys.exit(main())
