"""Makes the repository root importable for tests (core/, ui/) and AppTest page scripts."""
