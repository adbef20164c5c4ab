"""The `npunet` subcommands, one module each: `add_arguments(parser)` and `run(args) -> exit code`. A command
parses its options and calls the API or a library module; npunet.cli dispatches to them."""
