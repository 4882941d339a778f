"""One module per ``sead`` subcommand: argument parsing and printing only; logic lives elsewhere."""
