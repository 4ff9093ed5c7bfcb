"""``python -m tlkit`` (and ``torchrun -m tlkit``) run the CLI."""

from tlkit.cli import main

if __name__ == "__main__":
    main()
