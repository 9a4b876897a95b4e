"""The HTTP service: a thin shell that parses, authorises, calls one service function and
renders. Domain errors become HTTP responses in one table (``problems.py``)."""
