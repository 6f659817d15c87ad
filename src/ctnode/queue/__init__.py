"""The durable job queue: values, retry policy, the repository (only writer), workers."""
