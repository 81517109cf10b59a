"""`python -m dualprompt.embed`: the entry point; the program is `dualprompt.cli.embed`."""
from .cli import require_training_stack

if __name__ == "__main__":
    require_training_stack("dualprompt.embed")
    from .cli.embed import main
    main()
