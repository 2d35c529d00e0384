"""Use cases as plain async services: stores and security passed in, domain errors out, no HTTP."""
