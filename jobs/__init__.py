"""Jobs combining training and export (train, demo) and their command-line glue."""
