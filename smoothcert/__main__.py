"""``python -m smoothcert`` runs the command-line interface (also under ``torchrun``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
