"""Rendering reports: tables, JSON, Markdown, JUnit XML and self-contained HTML."""
