"""Demo data for a development database (``tokenbank demo``): users to sign in as, and
purchases, spends and holds made through the built-in Stripe emulator, so that every page
has something to show. It stands above everything else and nothing imports it but the
command line; it refuses production settings and real Stripe (``emulator``)."""

from tokenbank.demo.emulator import EmulatorHelpers, emulator_address, open_emulator
from tokenbank.demo.service import PEOPLE, DemoUser, Filled, Made, Person, fill, new_password

__all__ = [
    "PEOPLE",
    "DemoUser",
    "EmulatorHelpers",
    "Filled",
    "Made",
    "Person",
    "emulator_address",
    "fill",
    "new_password",
    "open_emulator",
]
