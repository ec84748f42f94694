"""Agent environments and tools: the contract (base.py), bounded tool calls (sandbox.py), built-ins."""
