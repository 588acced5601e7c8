"""`python -m unmirage` (also what `accelerate launch -m unmirage ...` runs)."""

from unmirage.cli.main import main

if __name__ == "__main__":
    main()
