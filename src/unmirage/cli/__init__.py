"""Command-line interface: one small module per command group, no logic beyond parsing and calling."""
