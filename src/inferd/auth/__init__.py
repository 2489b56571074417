"""Credentials and access: passwords, JWTs, API keys, principals, policies, rate limits."""
