"""Device profiles: the profile format, built-in and host profiles, and budgets."""
