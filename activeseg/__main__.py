"""``python -m activeseg`` runs the command line."""

from activeseg.cli import app

app()
