"""`make bench`: measures Steward's proxy against the development upstream (see runner.py)."""
