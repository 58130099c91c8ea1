"""The application layer: YAML + flags, task data plumbing, one run function per command, the CLI.

Nothing in the library imports from here.
"""
