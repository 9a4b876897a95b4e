"""Model calls: the OpenAI-compatible model emulator tokenbank's gateway is developed and
tested against (``emulator``), as the Stripe emulator stands in for Stripe."""
