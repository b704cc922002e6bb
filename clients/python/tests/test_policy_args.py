"""Guard(policy=...) as the client checks it before anything is sent: a key, type or choice the Policy
message cannot hold is named with what it takes (the sidecar checks ranges at OpenRun)."""
import re

import pytest

from models import make
from trainguard.guard import Guard


@pytest.mark.parametrize("policy, said", [
    ({"clip_mod": "FIXED"}, "did you mean 'clip_mode'"),
    ({"clipMode": "FIXED"}, "the Python client spells it 'clip_mode'"),
    ({"clip_threshold": "1.0"}, "'clip_threshold'='1.0': expects a number"),
    ({"max_consecutive_skips": 2.5}, "expects an integer"),
    ({"clip_mode": "ZCLIP"}, "expects one of OFF, FIXED, ZSCORE, PERCENTILE"),
    ({"hang_min": "10m"}, "expects seconds"),
])
def test_a_policy_key_or_value_the_client_cannot_send_is_named_with_what_it_takes(policy, said):
    # prevents: raw protobuf errors (no field named, no valid names listed) out of Guard(policy=...)
    model, opt = make()
    with pytest.raises(ValueError, match=re.escape(said)):
        Guard(model, opt, "bad-policy", target="127.0.0.1:1", deadline=0.2, open_deadline=0.2, policy=policy)
