"""The management API (`/api/v1/...`): users, keys, models, versions, deployments, audit."""
