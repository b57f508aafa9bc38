"""What tests build and share across folders: tiny models, image sets, profiles, bundles (builders, not tests:
no test module imports another test module)."""
