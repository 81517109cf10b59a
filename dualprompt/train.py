"""`python -m dualprompt.train`: the entry point; the program is `dualprompt.cli.train`."""
from .cli import require_training_stack

if __name__ == "__main__":
    require_training_stack("dualprompt.train")
    from .cli.train import main
    main()
