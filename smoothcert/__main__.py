"""``python -m smoothcert`` runs the command-line interface (also under ``torchrun``)."""

from smoothcert.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
