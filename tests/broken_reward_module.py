"""A reward module whose import fails (used by the bad-input table)."""
raise RuntimeError("this module is broken on purpose")
