"""The engine that runs pipelines; private. See ``_drive`` for the entry points."""
