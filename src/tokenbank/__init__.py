"""tokenbank: prepaid tokens for AI apps, sold through Stripe and spent safely."""

__version__ = "0.1.0"
