"""The Python SDK for inferd's HTTP API."""
