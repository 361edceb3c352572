"""``python -m daskcal``: the ``daskcal`` command."""

from daskcal.cli import console

if __name__ == "__main__":
    console()
