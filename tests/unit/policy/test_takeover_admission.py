"""Admission of the takeover's writes: only the migration identity marks a claim adopted (the mark keeps a pooled
resource name under perDevice), and adopted claims with legacy owners are releasable by holders of `claim`."""

from __future__ import annotations

from typing import Any

import pytest

from policy import names
from policy.access import Grant
from policy.names import ADOPTED_FROM, ANNOTATION_ADOPTED
from policy.objects import FINALIZER_AGENT
from takeover.plan import UPSTREAM_PCI_FINALIZER
from tests.support.objects import ADMIN, TENANT_A, Lab, changed, judge, migration, pciclaim, review, usbclaim, user

OWNER = names.ANNOTATION_REQUESTED_BY
GRANTS = (
    Grant(TENANT_A, "claim", names.GROUP, "pcidevices"),
    Grant(TENANT_A, "claim", names.GROUP, "usbdevices"),
    Grant("ops", "claim", names.GROUP, "pcidevices", name=Lab.gpu["metadata"]["name"]),
)
MARK = ("metadata", "annotations", ANNOTATION_ADOPTED)


def _upstream() -> dict[str, Any]:
    """A claim as upstream left it: the UI's body, upstream's finalizer, no owner annotation."""
    return changed(
        pciclaim(Lab.gpu, owner=None, ui=True, finalizers=[UPSTREAM_PCI_FINALIZER]), "metadata.annotations", None
    )


def _adopted(owner: str) -> dict[str, Any]:
    claim = changed(_upstream(), "metadata.annotations", {OWNER: owner, ANNOTATION_ADOPTED: ADOPTED_FROM})
    return changed(claim, "metadata.finalizers", [FINALIZER_AGENT])


@pytest.mark.parametrize(
    ("body", "allowed"),
    [
        pytest.param(review("UPDATE", _adopted("u-abc12"), _upstream(), user_info=migration()), True,
                     id="the takeover adopts an upstream claim: owner, mark, finalizer replaced"),
        pytest.param(review("UPDATE", _adopted("legacy:admin"), _upstream(), user_info=migration()), True,
                     id="the takeover adopts an upstream claim for a legacy owner"),
        pytest.param(review("UPDATE", changed(pciclaim(Lab.gpu), MARK, ADOPTED_FROM), pciclaim(Lab.gpu)), False,
                     id="the owner cannot mark its own claim adopted"),
        pytest.param(review("UPDATE", changed(pciclaim(Lab.gpu), MARK, ADOPTED_FROM), pciclaim(Lab.gpu),
                            user_info=user(ADMIN, groups=("system:masters",))), False,
                     id="not even a cluster-admin marks a claim adopted"),
        pytest.param(review("UPDATE", changed(_adopted(TENANT_A), MARK, None), _adopted(TENANT_A)), False,
                     id="the owner cannot remove the mark"),
        pytest.param(review("CREATE", changed(pciclaim(Lab.gpu), MARK, ADOPTED_FROM)), False,
                     id="a user cannot create a claim marked adopted"),
        pytest.param(review("CREATE", changed(usbclaim(Lab.stick), MARK, ADOPTED_FROM)), False,
                     id="a user cannot create a usb claim marked adopted"),
        pytest.param(review("CREATE", changed(pciclaim(Lab.gpu, owner="legacy:admin"), MARK, ADOPTED_FROM),
                            user_info=migration()), True,
                     id="the takeover may create a claim marked adopted"),
        pytest.param(review("DELETE", old=_adopted("legacy:admin"), user_info=user("ops")), True,
                     id="a holder of claim on the device releases an adopted legacy claim"),
        pytest.param(review("DELETE", old=_adopted("u-abc12"), user_info=user("ops")), False,
                     id="a holder of claim cannot release an adopted claim whose owner is a real user"),
        pytest.param(review("DELETE", old=_adopted("u-abc12"), user_info=user("u-abc12")), True,
                     id="the mapped owner releases its adopted claim"),
    ],
)  # fmt: skip
def test_takeover_admission(body: dict[str, Any], allowed: bool) -> None:
    d = judge(body, Lab.cluster(), GRANTS)
    assert d.allowed is allowed, d.message
    if not allowed and ANNOTATION_ADOPTED in str(body):
        assert ANNOTATION_ADOPTED in d.message or "release" in d.message, d.message
