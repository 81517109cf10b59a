"""`python -m dualprompt.check_data`: the entry point; the program is
`dualprompt.cli.check_data`."""
from .cli import require_training_stack

if __name__ == "__main__":
    require_training_stack("dualprompt.check_data")
    from .cli.check_data import main
    main()
