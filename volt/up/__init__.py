"""``volt up``: one machine, one command."""
