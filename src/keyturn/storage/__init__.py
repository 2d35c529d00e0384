"""Storage: the only package that builds SQL. Stores return plain dataclasses, not ORM rows."""
