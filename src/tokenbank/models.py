"""Every table, registered on ``tokenbank.db.metadata`` (what migrations compare against)."""

from tokenbank.db import metadata
from tokenbank.ledger import models as ledger_models
from tokenbank.users import models as users_models

__all__ = ["ledger_models", "metadata", "users_models"]
