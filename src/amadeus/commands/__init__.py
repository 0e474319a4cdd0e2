"""The command layer: every `amadeus ...` sub-command.

One module per sub-command, each exposing `add_arguments(parser)` and `run(args) -> int`, registered
in `amadeus.cli.TOOL_COMMANDS`. Commands parse, validate, print and choose exit codes; the library
modules they drive take typed arguments and raise exceptions. `lightning` is the one LightningCLI
factory (fit / validate / test and the demo's training stages); `_common` holds the sampler's flags and
the shared device and thread set-up.
"""
