"""People who own wallets: the host app's users (addressed by its own id) and, later,
users who sign in to tokenbank's pages. Calls the ledger to open their wallets."""

from tokenbank.errors import EmailTaken, UserExists
from tokenbank.users.emails import Address
from tokenbank.users.service import (
    Upsert,
    User,
    check_name,
    create_user,
    email_columns,
    find_users,
    get_user,
    holder,
    upsert_user,
)

__all__ = [
    "Address",
    "EmailTaken",
    "Upsert",
    "User",
    "UserExists",
    "check_name",
    "create_user",
    "email_columns",
    "find_users",
    "get_user",
    "holder",
    "upsert_user",
]
