"""Budget-driven search (``edgecompress search``): the smallest, fastest candidate that meets a device profile."""
