"""`python -m dualprompt.evaluate`: the entry point; the program is `dualprompt.cli.evaluate`."""
from .cli import require_training_stack

if __name__ == "__main__":
    require_training_stack("dualprompt.evaluate")
    from .cli.evaluate import main
    main()
