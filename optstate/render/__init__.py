"""Views of core results: ``json_view`` (plain dicts, no rich) and ``human`` (rich)."""
