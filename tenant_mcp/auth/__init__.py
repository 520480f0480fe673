"""Authentication: API keys (`apikeys`), bearer JWTs (`jwt`), and the `authenticator` that
resolves either to exactly one tenant."""
