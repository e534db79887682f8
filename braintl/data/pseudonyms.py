"""Salted hashes in place of patient identifiers, so none leaves the hospital.

PatientID, Study/Series/SOP Instance UIDs and the like are needed to group slices by patient,
but must never reach a log, a report, a model card or a results file. Each is replaced, as it is
read, by an HMAC-SHA256 keyed with a secret salt (``BRAINTL_ID_SALT``): equal identifiers stay
equal, so groups and counts still work, while an unsalted hash of a short medical record number
could be reversed by trying every number. No salt, no identifiers: reading a file that carries
one without the salt set fails at once instead of falling back to a guessable hash.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from braintl.errors import UserError

SALT_ENV = "BRAINTL_ID_SALT"


def pseudonym(kind: str, value: str) -> str:
    """``kind`` plus 16 hex digits of HMAC(salt, kind:value); ``kind`` keeps name spaces apart."""
    salt = os.environ.get(SALT_ENV, "")
    if not salt:
        raise UserError(
            f"these files carry patient identifiers ({kind}) and {SALT_ENV} is not set: set it to "
            "a long random secret (the same for every run that should share groups, e.g. from a "
            "Prefect Secret block in the work pool's environment), e.g. "
            f"export {SALT_ENV}=$(openssl rand -hex 32)"
        )
    digest = hmac.new(salt.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"{kind}-{digest[:16]}"
