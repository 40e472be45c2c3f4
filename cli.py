"""Run activeseg from a checkout: ``python cli.py round`` does what ``activeseg round`` does."""

from activeseg.cli import app

if __name__ == "__main__":
    app()
