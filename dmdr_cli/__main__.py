"""`python -m dmdr_cli ...` (used by `accelerate launch -m dmdr_cli distill ...`)."""

from .cli import main

main()
