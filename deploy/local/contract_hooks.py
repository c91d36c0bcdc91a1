"""Schemathesis hooks of `make contract` (deploy/local/contract.sh): realistic values for the
two rules of the API that no JSON Schema can state, so the rest of each body is still tested.
Each leaves a value that breaks the document as generated: it is meant to be refused.

* A DKIM key in RSA PEM form is valid or not by its mathematics: the document's pattern
  describes the PEM envelope, so schemathesis generates envelopes of random base64, which the
  API rightly refuses. Where a generated key matches that envelope whole, a real RSA key
  (PULSE_CONTRACT_RSA_KEY, made by the script) is put in.
* A failure guard trips when `max_failed` of the last `of_last` sends failed, so `max_failed`
  must be below `of_last` (a comparison of two fields). Where both are integers in their
  documented ranges and the rule does not hold, `max_failed` becomes `of_last - 1`.
"""

import os
import re

import schemathesis

PEM = re.compile(
    r"^-----BEGIN RSA PRIVATE KEY-----\n[A-Za-z0-9+/=\n]{64,8000}\n-----END RSA PRIVATE KEY-----\n?$"
)
with open(os.environ["PULSE_CONTRACT_RSA_KEY"]) as f:
    REAL_KEY = f.read()


def _in_range(v, low, high):
    # An integer, or one written with a zero fraction (`599.0`), which the API reads as one.
    return (
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and float(v).is_integer()
        and low <= v <= high
    )


def _swap(value):
    if isinstance(value, dict):
        value = {
            k: REAL_KEY if k == "private_key" and isinstance(v, str) and PEM.match(v) else _swap(v)
            for k, v in value.items()
        }
        failed, last = value.get("max_failed"), value.get("of_last")
        if _in_range(failed, 0, 2**32 - 1) and _in_range(last, 1, 1000) and failed >= last:
            value["max_failed"] = int(last) - 1
        return value
    if isinstance(value, list):
        return [_swap(v) for v in value]
    return value


@schemathesis.hook
def map_case(context, case):
    if isinstance(case.body, (dict, list)):
        case.body = _swap(case.body)
    return case
