"""The one role runtime every command uses: Ray start-up, fit check, pools -> placement groups, slots (tensor-
parallel bundles included), actor groups with deadlines, rendezvous and shutdown (see roles.py)."""
