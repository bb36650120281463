"""CLI subcommands; each module has ``HELP``, ``add_arguments`` and ``run`` (imports heavy deps lazily)."""
