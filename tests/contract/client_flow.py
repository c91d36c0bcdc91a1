"""A client generated from Pulse's OpenAPI document by openapi-python-client (PyPI), driven
through the control plane's main path: create a sequence, enroll a lead, pause and resume, list
the enrollments and the sends. Run by tests/tests/it/contract.rs with the generated package on
sys.path; arguments: the base URL and an API key. Exits non-zero on any surprise."""

import sys
import time

from pulse_client import AuthenticatedClient
from pulse_client.api.control import pause, resume
from pulse_client.api.enrollments import create_enrollment as enroll
from pulse_client.api.enrollments import list_enrollments
from pulse_client.api.sends import for_sequence
from pulse_client.api.sequences import create_sequence as create
from pulse_client.api.sequences import get_sequence as get_one
from pulse_client.models import CreateSequence, ManualEnrollment

base, key = sys.argv[1], sys.argv[2]
client = AuthenticatedClient(base_url=base, token=key, raise_on_unexpected_status=True)


def ok(response, status):
    assert response.status_code == status, (response.status_code, response.content)
    return response.parsed


sequence = ok(
    create.sync_detailed(
        client=client,
        body=CreateSequence.from_dict(
            {
                "name": "Generated client",
                "sender": {"from": "Pulse <pulse@example.com>"},
                "steps": [
                    {"subject": "Hi {{ lead.first_name }}", "body": "Hello", "timing": {"type": "immediately"}}
                ],
            }
        ),
    ),
    201,
)
sid = sequence.id
enrollment = ok(
    enroll.sync_detailed(
        sid,
        client=client,
        body=ManualEnrollment.from_dict({"lead": {"email": "grace@example.com", "first_name": "Grace"}}),
    ),
    201,
)
assert enrollment.lead_email == "grace@example.com", enrollment

# Wait for the send, then pause and resume.
for _ in range(100):
    sends = ok(for_sequence.sync_detailed(sid, client=client), 200)
    if sends.sends and str(sends.sends[0].state) == "SENT":
        break
    time.sleep(0.1)
else:
    raise AssertionError("the lead's send never showed as SENT")

ok(pause.sync_detailed(sid, client=client), 200)
assert str(ok(get_one.sync_detailed(sid, client=client), 200).status) == "PAUSED"
ok(resume.sync_detailed(sid, client=client), 200)
assert str(ok(get_one.sync_detailed(sid, client=client), 200).status) == "ACTIVE"

enrollments = ok(list_enrollments.sync_detailed(sid, client=client), 200)
assert [e.lead_email for e in enrollments.enrollments] == ["grace@example.com"], enrollments
print("generated client: created, enrolled, sent, paused, resumed, listed")
