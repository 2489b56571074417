"""The model registry: database (users, keys, models, versions, deployments, audit), artifacts."""
