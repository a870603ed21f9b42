"""`python -m framecast ...`, as torchrun launches it (`torchrun --nproc-per-node=2 -m framecast generate ...`)."""

from framecast.cli import main

raise SystemExit(main())
