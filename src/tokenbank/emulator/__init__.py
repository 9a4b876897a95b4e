"""A built-in Stripe emulator: the part of Stripe's API tokenbank uses, offline.

The official ``stripe`` SDK runs against it unchanged (``base_addresses={"api": url}``), a
browser can pay on its hosted Checkout page or through its Stripe.js stand-in, and events
reach the webhook endpoint signed as Stripe signs them. Test controls live under /_emulator/.
"""

from tokenbank.emulator.app import create_app, serve
from tokenbank.emulator.state import Emulator

__all__ = ["Emulator", "create_app", "serve"]
