"""``package``: serverless bundles, their configuration, wheels, cold start and report."""
