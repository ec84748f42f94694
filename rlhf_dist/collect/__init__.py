"""Human preference collection: candidates from a policy, a small web app that takes people's votes into a
SQLite store, and the export of those votes as the pairs `rlhf-dist rm` and `rlhf-dist dpo` read."""
