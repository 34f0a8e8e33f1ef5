"""Client tests: the offline library, storage, sync against a real relay, peers, the CLI."""
