"""Budget-driven search (``edgecompress search``): the smallest, fastest candidate that meets a device profile."""

from compress.search.config import Objective, SearchConfig
from compress.search.conclude import SearchResult
from compress.search.run import run_search

__all__ = ["Objective", "SearchConfig", "SearchResult", "run_search"]
