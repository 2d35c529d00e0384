"""Pure security primitives: hashing, tokens, keys and JWTs. No database, no web framework."""
