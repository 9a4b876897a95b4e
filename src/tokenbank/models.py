"""Every table, registered on ``tokenbank.db.metadata`` (what migrations compare against)."""

from tokenbank.apikeys import models as apikeys_models
from tokenbank.audit import models as audit_models
from tokenbank.billing import models as billing_models
from tokenbank.db import metadata
from tokenbank.grants import models as grants_models
from tokenbank.identity import models as identity_models
from tokenbank.ledger import models as ledger_models
from tokenbank.llm import tables as llm_tables
from tokenbank.mail import models as mail_models
from tokenbank.users import models as users_models
from tokenbank.worker import models as worker_models

__all__ = [
    "apikeys_models",
    "audit_models",
    "billing_models",
    "grants_models",
    "identity_models",
    "ledger_models",
    "llm_tables",
    "mail_models",
    "metadata",
    "users_models",
    "worker_models",
]
