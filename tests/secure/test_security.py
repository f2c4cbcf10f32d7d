"""Security properties: masked vectors look uniform, every lab refusal, server rejections,
the split-view attack failing, retirement and re-keying, no non-cryptographic generators."""

from __future__ import annotations

import itertools
import math
import pathlib
import random
import re

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlab.errors import ProtocolError, RoundAborted
from fedlab.secure import shamir, signing, wire
from fedlab.secure.prg import apply_masks_into, self_mask_key
from fedlab.secure.protocol import LabSession
from tests.secure.federation import Federation, plain_average

# --------------------------------------------------------------------------- helpers


def chi2_sf(x: float, dof: int) -> float:
    """Survival function of the chi-square distribution (regularized upper gamma)."""
    a, y = dof / 2.0, x / 2.0
    if y <= 0:
        return 1.0
    log_front = -y + a * math.log(y) - math.lgamma(a)
    if y < a + 1:  # series for the lower function
        term = total = 1.0 / a
        n = a
        while abs(term) > abs(total) * 1e-16:
            n += 1
            term *= y / n
            total += term
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300  # continued fraction for the upper function (modified Lentz)
    b = y + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return math.exp(log_front) * h


def byte_uniformity_p(vector: np.ndarray) -> float:
    counts = np.bincount(np.frombuffer(vector.astype("<u4").tobytes(), dtype=np.uint8), minlength=256)
    expected = counts.sum() / 256.0
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return chi2_sf(statistic, 255)


def body_of(signed: bytes) -> dict:
    return wire.decode(wire.decode(signed)["body"])


def edit(request: bytes, **changes: object) -> bytes:
    value = wire.decode(request)
    value.update(changes)
    return wire.encode(value)


def updates_for(fed: Federation, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    rng = np.random.default_rng(seed)
    updates = {lab: rng.standard_normal(fed.vector_len).astype(np.float32) for lab in fed.params.labs}
    weights = {lab: int(rng.integers(1, 500)) for lab in fed.params.labs}
    return updates, weights


def after_dropout(n: int = 6, dropped: str = "lab-05") -> Federation:
    """Round 1 with ``dropped`` missing in R1: every other lab revealed and retired its round key."""
    fed = Federation.create(n, 8)
    fed.setup()
    updates, weights = updates_for(fed)
    result = fed.round(1, updates, weights, drop_r1=[dropped])
    assert result.dropped == (dropped,)
    return fed


def start_round(fed: Federation, rnd: int) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Honest R1 for ``rnd`` answered by every participant; returns (R1 requests, R2 requests)."""
    updates, weights = updates_for(fed, rnd)
    r1 = fed.server.train_requests(rnd, fed.params.labs)
    masked = {lab: fed.labs[lab].masked_update(req, updates[lab], weights[lab]) for lab, req in r1.items()}
    fed.last["masked"] = masked
    return r1, fed.server.collect_masked(rnd, masked)


# --------------------------------------------------------------------------- uniformity


def test_chi_square_helper_matches_closed_forms() -> None:
    for x in (0.5, 2.0, 7.3, 40.0):
        assert math.isclose(chi2_sf(x, 2), math.exp(-x / 2), rel_tol=1e-12)
        assert math.isclose(chi2_sf(x, 1), math.erfc(math.sqrt(x / 2)), rel_tol=1e-9)
    assert 0.45 < chi2_sf(254.3, 255) < 0.55


def test_masked_vector_is_indistinguishable_from_uniform() -> None:
    fed = Federation.create(5, 65_535)
    fed.setup()
    update = (np.random.default_rng(7).standard_normal(65_535) * 0.01).astype(np.float32)
    r1 = fed.server.train_requests(1, fed.params.labs)
    lab = fed.params.labs[0]
    masked, _ = fed.labs[lab].masked_update(r1[lab], update, 10)
    plain = fed.params.encoder.encode(update, 10)
    assert byte_uniformity_p(masked) > 0.001
    assert byte_uniformity_p(plain) < 1e-12


# --------------------------------------------------------------------------- lab refusals


def test_r1_refuses_too_few_participants() -> None:
    fed = Federation.create(5, 4, min_labs=4)
    fed.setup()
    r1 = fed.server.train_requests(1, fed.params.labs)
    lab = fed.params.labs[0]
    request = edit(r1[lab], participants=list(fed.params.labs[:3]))
    with pytest.raises(ProtocolError, match=r"lab 'lab-00', round 1, stage 'train'.*fewer than min_labs = 4"):
        fed.labs[lab].masked_update(request, np.zeros(4, dtype=np.float32), 1)


def test_r1_refuses_participant_not_in_roster() -> None:
    fed = Federation.create(4, 4)
    fed.setup()
    r1 = fed.server.train_requests(1, fed.params.labs)
    lab = fed.params.labs[0]
    request = edit(r1[lab], participants=[*fed.params.labs, "mallory"])
    with pytest.raises(ProtocolError, match=r"\['mallory'\] are not in the roster"):
        fed.labs[lab].masked_update(request, np.zeros(4, dtype=np.float32), 1)


def test_r1_refuses_too_few_neighbours() -> None:
    fed = Federation.create(6, 4)  # k = 5, t = 3
    fed.setup()
    r1 = fed.server.train_requests(1, fed.params.labs)
    lab = fed.params.labs[0]
    request = edit(r1[lab], participants=list(fed.params.labs[:3]))  # 2 neighbours < t
    with pytest.raises(ProtocolError, match="only 2 of this lab's neighbours participate"):
        fed.labs[lab].masked_update(request, np.zeros(4, dtype=np.float32), 1)
    # The honest request still works: the refusal changed nothing.
    fed.labs[lab].masked_update(r1[lab], np.zeros(4, dtype=np.float32), 1)


def test_r1_refuses_retired_neighbour() -> None:
    fed = after_dropout()
    lab = "lab-00"
    assert fed.labs[lab].retired == {"lab-05": 1}
    fed.server.labs_needing_setup(fed.params.labs)
    r1 = fed.server.train_requests(2, fed.params.labs)
    assert "lab-05" not in r1  # the honest server excludes it until it re-keys
    request = edit(r1[lab], participants=list(fed.params.labs))
    with pytest.raises(ProtocolError, match="'lab-05' uses keys this lab retired.*round 1"):
        fed.labs[lab].masked_update(request, np.zeros(8, dtype=np.float32), 1)
    # Relaying its old (retired) advert does not help either.
    old_advert = fed.last["adverts"]["lab-05"]
    request = edit(r1[lab], participants=list(fed.params.labs), adverts=[old_advert])
    with pytest.raises(ProtocolError, match="was retired"):
        fed.labs[lab].masked_update(request, np.zeros(8, dtype=np.float32), 1)


def test_r2_refuses_too_few_survivors() -> None:
    fed = Federation.create(6, 4)  # k = 5, t = 3
    fed.setup()
    _, r2 = start_round(fed, 1)
    lab, labs = "lab-00", list(fed.params.labs)
    request = edit(r2[lab], survivors=labs[:3], dropped=labs[3:], seeds={})
    with pytest.raises(ProtocolError, match="2 surviving neighbours.*too few"):
        fed.labs[lab].unmask(request)


def test_r2_refuses_lab_in_both_sets() -> None:
    fed = Federation.create(6, 4)
    fed.setup()
    _, r2 = start_round(fed, 1)
    lab, labs = "lab-00", list(fed.params.labs)
    request = edit(r2[lab], survivors=labs, dropped=["lab-03"])
    with pytest.raises(ProtocolError, match=r"\['lab-03'\] are named both survivors and dropped"):
        fed.labs[lab].unmask(request)


def test_r2_refuses_sets_not_partitioning_participants() -> None:
    fed = Federation.create(6, 4)
    fed.setup()
    _, r2 = start_round(fed, 1)
    lab, labs = "lab-00", list(fed.params.labs)
    for survivors, dropped in ((labs[:5], []), (labs, ["lab-99"]), ([*labs[:5]], ["lab-01"])):
        request = edit(r2[lab], survivors=survivors, dropped=dropped, seeds={})
        with pytest.raises(ProtocolError, match="do not partition|not in the roster|both"):
            fed.labs[lab].unmask(request)
    fed.labs[lab].unmask(r2[lab])  # the honest request is still answered


def test_r2_refuses_seed_share_of_revealed_lab() -> None:
    fed = after_dropout()
    lab = "lab-00"
    fed.setup(available=[x for x in fed.params.labs if x != "lab-05"])
    _, r2 = start_round(fed, 2)
    entry = next(iter(wire.decode(r2[lab])["seeds"].values()))  # any well-formed entry
    seeds = dict(wire.decode(r2[lab])["seeds"], **{"lab-05": entry})
    with pytest.raises(
        ProtocolError, match="seed share of 'lab-05', whose round key this lab revealed in round 1"
    ):
        fed.labs[lab].unmask(edit(r2[lab], seeds=seeds))


def test_r2_refuses_replayed_seed_statement() -> None:
    fed = Federation.create(6, 4)
    fed.setup()
    lab, owner = "lab-00", "lab-02"
    stale_owner_state = fed.labs[owner].export_state()  # before it used seed 0
    updates, weights = updates_for(fed)
    fed.round(1, updates, weights)
    round1_entry = wire.decode(fed.last["r2"][lab])["seeds"][owner]
    r1, r2 = start_round(fed, 2)
    honest = wire.decode(r2[lab])["seeds"]
    # (a) the owner's statement for round 1 replayed in round 2
    seeds = dict(honest, **{owner: round1_entry})
    with pytest.raises(ProtocolError, match="for round 1, not by 'lab-02' for round 2"):
        fed.labs[lab].unmask(edit(r2[lab], seeds=seeds))
    # (b) an owner restored from stale state signs seed 0 again for round 2: the holder
    # released seed 0 in round 1 and refuses to release it again.
    stale = LabSession.restore(stale_owner_state, fed.params, owner, fed.identities[owner], fed.roster)
    _, stale_header = stale.masked_update(r1[owner], np.zeros(4, dtype=np.float32), 1)
    seeds = dict(honest, **{owner: {"use": body_of(stale_header)["seed_use"], "ct": round1_entry["ct"]}})
    with pytest.raises(ProtocolError, match="seed 0 \\(epoch 1\\) of 'lab-02' was already released"):
        fed.labs[lab].unmask(edit(r2[lab], seeds=seeds))
    fed.labs[lab].unmask(r2[lab])  # honest request answered


def test_lab_refuses_out_of_order_and_repeated_stages() -> None:
    fed = Federation.create(4, 4)
    labs = fed.params.labs
    lab = labs[0]
    session = fed.labs[lab]
    s1 = fed.server.advertise_requests(labs)
    fake_s2 = wire.encode({"type": "S2", "run": fed.params.run_id, "epoch": 1, "lab": lab, "adverts": []})
    fake_r1 = wire.encode(
        {
            "type": "R1",
            "run": fed.params.run_id,
            "round": 1,
            "lab": lab,
            "vector_len": 4,
            "participants": list(labs),
            "adverts": [],
        }
    )
    fake_r2 = wire.encode(
        {
            "type": "R2",
            "run": fed.params.run_id,
            "round": 1,
            "lab": lab,
            "survivors": list(labs),
            "dropped": [],
            "seeds": {},
        }
    )
    zeros = np.zeros(4, dtype=np.float32)
    with pytest.raises(ProtocolError, match="S2 must follow S1"):
        session.share_keys(fake_s2)
    with pytest.raises(ProtocolError, match="setup incomplete"):
        session.masked_update(fake_r1, zeros, 1)
    with pytest.raises(ProtocolError, match="R2 must follow R1"):
        session.unmask(fake_r2)
    adverts = {x: fed.labs[x].advertise(req) for x, req in s1.items()}
    with pytest.raises(ProtocolError, match="repeated or replayed setup"):
        session.advertise(s1[lab])
    with pytest.raises(ProtocolError, match="setup incomplete"):
        session.masked_update(fake_r1, zeros, 1)
    s2 = fed.server.collect_adverts(adverts)
    fed.server.collect_shares({x: fed.labs[x].share_keys(req) for x, req in s2.items()})
    with pytest.raises(ProtocolError, match="S2 must follow S1"):
        session.share_keys(s2[lab])
    assert not session.needs_setup
    r1 = fed.server.train_requests(1, labs)
    with pytest.raises(ProtocolError, match="R2 must follow R1"):
        session.unmask(fake_r2)
    masked = {x: fed.labs[x].masked_update(req, zeros, 1) for x, req in r1.items()}
    with pytest.raises(ProtocolError, match="already answered"):
        session.masked_update(r1[lab], zeros, 1)
    r2 = fed.server.collect_masked(1, masked)
    session.unmask(r2[lab])
    with pytest.raises(ProtocolError, match="R2 must follow R1"):
        session.unmask(r2[lab])
    with pytest.raises(ProtocolError, match="already answered"):
        session.masked_update(r1[lab], zeros, 1)
    with pytest.raises(ProtocolError, match="addressed to 'lab-01'"):
        session.advertise(edit(s1[lab], lab="lab-01", epoch=9))
    with pytest.raises(ProtocolError, match="for run 'other'"):
        session.advertise(edit(s1[lab], run="other", epoch=9))


def test_lab_refuses_forged_advert() -> None:
    fed = Federation.create(4, 4)
    labs = fed.params.labs
    s1 = fed.server.advertise_requests(labs)
    adverts = {x: fed.labs[x].advertise(req) for x, req in s1.items()}
    s2 = fed.server.collect_adverts(adverts)
    lab = labs[0]
    state = fed.labs[lab].export_state()

    def fresh() -> LabSession:
        return LabSession.restore(state, fed.params, lab, fed.identities[lab], fed.roster)

    genuine = adverts["lab-01"]
    body = wire.decode(genuine)["body"]
    outsider = Ed25519PrivateKey.generate()
    forged_sig = signing.sign(outsider, fed.params.run_id, 1, "advertise", "lab-01", body)
    tampered_body = body.replace(wire.decode(body)["mask_pk"], bytes(32))
    mallory_body = wire.encode(dict(wire.decode(body), lab="mallory"))
    cases = {
        "signed by a key outside the roster": wire.encode({"body": body, "sig": forged_sig}),
        "keys swapped after signing": wire.encode(
            {"body": tampered_body, "sig": wire.decode(genuine)["sig"]}
        ),
        "from a lab outside the roster": wire.encode(
            {
                "body": mallory_body,
                "sig": signing.sign(outsider, fed.params.run_id, 1, "advertise", "mallory", mallory_body),
            }
        ),
        "its own advert": adverts[lab],
    }
    for name, advert in cases.items():
        request = edit(s2[lab], adverts=[advert, *[adverts[x] for x in labs[2:]]])
        with pytest.raises(
            ProtocolError, match="does not verify|not in the roster|not a neighbour"
        ) as caught:
            fresh().share_keys(request)
        assert "refused" in str(caught.value), name
    fresh().share_keys(s2[lab])  # the genuine request is accepted


# --------------------------------------------------------------------------- retirement


def test_dropped_lab_reruns_setup_and_neighbours_accept_new_keys() -> None:
    fed = after_dropout()
    labs = list(fed.params.labs)
    assert all(fed.labs[x].retired == {"lab-05": 1} for x in labs[:5])
    assert fed.server.labs_needing_setup(labs) == ["lab-05"]
    old = body_of(fed.last["adverts"]["lab-05"])
    assert fed.setup() == ["lab-05"]
    new = body_of(fed.last["adverts"]["lab-05"])
    assert new["epoch"] > old["epoch"]
    assert new["mask_pk"] != old["mask_pk"]  # the revealed mask key is never used again
    assert new["enc_pk"] == old["enc_pk"]  # the share key, never revealed, is kept
    updates, weights = updates_for(fed, 2)
    result = fed.round(2, updates, weights)
    assert result.survivors == tuple(labs)
    expected = plain_average(updates, weights, labs, fed.params.clip)
    assert np.abs(result.average - expected).max() <= result.error_bound
    assert all(fed.labs[x].retired == {} for x in labs[:5])  # the new keys were accepted


def test_lying_server_cannot_unmask_a_single_lab() -> None:
    """The server holds lab-00's masked vector and shows each lab whichever survivor set
    helps it most. Every lab answers one R2 per round, so it can collect, per neighbour,
    *either* a share of lab-00's seed *or* their round key, and from lab-00 itself at most
    k - t round keys. No combination unmasks lab-00; taking both answers from every
    neighbour (which the state machine forbids) would."""
    fed = Federation.create(7, 16)  # k = 6, t = 4
    fed.setup()
    params, target = fed.params, "lab-00"
    neighbours = params.neighbours_of(target)
    t = params.threshold
    updates, weights = updates_for(fed, 3)
    r1 = fed.server.train_requests(1, params.labs)
    masked = {}
    for lab, request in r1.items():
        masked[lab] = fed.labs[lab].masked_update(request, updates[lab], weights[lab])
    before_r2 = {lab: fed.labs[lab].export_state() for lab in params.labs}
    honest_r2 = fed.server.collect_masked(1, masked)

    def answer(lab: str, request: bytes) -> dict:
        session = LabSession.restore(before_r2[lab], params, lab, fed.identities[lab], fed.roster)
        return body_of(session.unmask(request))

    def view(lab: str, dropped: list[str]) -> bytes:
        honest = wire.decode(honest_r2[lab])
        survivors = [x for x in params.labs if x not in dropped]
        seeds = {o: e for o, e in honest["seeds"].items() if o not in dropped}
        return edit(honest_r2[lab], survivors=survivors, dropped=dropped, seeds=seeds)

    share_if_alive = {j: answer(j, view(j, []))["shares"][target] for j in neighbours}
    key_if_dropped = {j: answer(j, view(j, [target]))["pair_keys"][target] for j in neighbours}
    for j in neighbours:  # each view yields only its kind of secret
        assert target not in answer(j, view(j, [target]))["shares"]
        assert answer(j, view(j, []))["pair_keys"] == {}
    target_keys: dict[frozenset[str], dict[str, bytes]] = {}
    for size in range(len(neighbours) + 1):
        for dropped in itertools.combinations(neighbours, size):
            try:
                target_keys[frozenset(dropped)] = answer(target, view(target, list(dropped)))["pair_keys"]
            except ProtocolError:
                assert size > params.neighbours - t  # only refused when too few survivors remain
    assert max(len(d) for d in target_keys) == params.neighbours - t

    vector = masked[target][0]
    exact = params.encoder.encode(updates[target], weights[target])

    def unmask(shares: dict[str, bytes], keys: dict[str, bytes]) -> bool:
        if len(shares) < t or set(keys) != set(neighbours):
            return False
        seed = shamir.combine({params.share_x(j): s for j, s in shares.items()}, t)
        acc = vector.copy()
        masks = [(self_mask_key(seed, params.run_id, 1, target), -1)]
        masks += [(k, -1 if target < j else 1) for j, k in keys.items()]
        apply_masks_into(acc, masks)
        return bool(np.array_equal(acc, exact))

    # Positive control: both answers of every neighbour would expose the update.
    assert unmask(share_if_alive, key_if_dropped)
    # Every strategy the state machines allow fails.
    for alive_count in range(len(neighbours) + 1):
        for alive in itertools.combinations(neighbours, alive_count):
            shares = {j: share_if_alive[j] for j in alive}
            for keys_from_target in target_keys.values():
                keys = {j: key_if_dropped[j] for j in neighbours if j not in alive}
                keys.update(keys_from_target)
                assert not unmask(shares, keys)
    # And a lab that answered once refuses the other view.
    session = LabSession.restore(before_r2["lab-01"], params, "lab-01", fed.identities["lab-01"], fed.roster)
    session.unmask(view("lab-01", []))
    with pytest.raises(ProtocolError, match="R2 must follow R1"):
        session.unmask(view("lab-01", [target]))


# --------------------------------------------------------------------------- server rejections


def rejection(fed: Federation, lab: str) -> dict:
    events = [e for e in fed.server.events if e["lab"] == lab and e["event"] == "rejected"]
    assert events, fed.server.events
    return events[-1]


def test_server_rejects_and_records_bad_signature() -> None:
    fed = Federation.create(6, 4)
    fed.setup()
    r1 = fed.server.train_requests(1, fed.params.labs)
    masked = {
        lab: fed.labs[lab].masked_update(req, np.ones(4, dtype=np.float32), 2) for lab, req in r1.items()
    }
    vector, header = masked["lab-01"]
    outer = wire.decode(header)
    flipped = wire.encode({"body": outer["body"], "sig": bytes([outer["sig"][0] ^ 1]) + outer["sig"][1:]})
    resigned = wire.encode(
        {
            "body": outer["body"],
            "sig": signing.sign(
                fed.identities["lab-02"], fed.params.run_id, 1, "train", "lab-01", outer["body"]
            ),
        }
    )
    masked["lab-01"] = (vector, flipped)
    r2 = fed.server.collect_masked(1, masked)
    event = rejection(fed, "lab-01")
    assert (event["round"], event["stage"]) == (1, "train") and "does not verify" in event["reason"]
    assert "lab-01" not in r2
    result = fed.server.collect_unmask(1, {lab: fed.labs[lab].unmask(req) for lab, req in r2.items()})
    assert result.dropped == ("lab-01",) and result.total_weight == 10
    # A signature by another roster lab over the same body fails the same way.
    fed2 = Federation.create(6, 4)
    fed2.setup()
    r1 = fed2.server.train_requests(1, fed2.params.labs)
    masked = {
        lab: fed2.labs[lab].masked_update(req, np.ones(4, dtype=np.float32), 2) for lab, req in r1.items()
    }
    masked["lab-01"] = (masked["lab-01"][0], resigned)
    fed2.server.collect_masked(1, masked)
    assert "does not verify" in rejection(fed2, "lab-01")["reason"]


def test_server_rejects_and_records_lab_outside_roster() -> None:
    fed = Federation.create(5, 4)
    fed.setup()
    r1 = fed.server.train_requests(1, fed.params.labs)
    masked = {
        lab: fed.labs[lab].masked_update(req, np.ones(4, dtype=np.float32), 1) for lab, req in r1.items()
    }
    masked["mallory"] = masked["lab-00"]
    outsider = Ed25519PrivateKey.generate()
    body = wire.decode(masked["lab-01"][1])["body"]
    body = wire.encode(dict(wire.decode(body), lab="mallory"))
    fake = wire.encode(
        {"body": body, "sig": signing.sign(outsider, fed.params.run_id, 1, "train", "mallory", body)}
    )
    masked["lab-02"] = (masked["lab-02"][0], fake)
    fed.server.collect_masked(1, masked)
    assert rejection(fed, "mallory")["reason"] == "not in the roster"
    assert "not in the roster" in rejection(fed, "lab-02")["reason"]
    # Setup messages too.
    other = Federation.create(5, 4)
    s1 = other.server.advertise_requests(["lab-00", "stranger"])
    assert set(s1) == {"lab-00"}
    assert rejection(other, "stranger")["reason"] == "not in the roster"
    advert = other.labs["lab-00"].advertise(s1["lab-00"])
    other.server.collect_adverts({"lab-00": advert, "stranger": b"x"})
    assert rejection(other, "stranger")["reason"] == "not in the roster"


def test_server_rejects_and_records_past_round() -> None:
    fed = Federation.create(5, 4)
    fed.setup()
    updates, weights = updates_for(fed)
    fed.round(1, updates, weights)
    old_masked, old_unmask = fed.last["masked"], fed.last["unmask"]
    r1 = fed.server.train_requests(2, fed.params.labs)
    masked = {lab: fed.labs[lab].masked_update(req, updates[lab], weights[lab]) for lab, req in r1.items()}
    masked["lab-03"] = old_masked["lab-03"]
    r2 = fed.server.collect_masked(2, masked)
    event = rejection(fed, "lab-03")
    assert (event["round"], event["stage"]) == (2, "train") and "past round 1" in event["reason"]
    replies = {lab: fed.labs[lab].unmask(req) for lab, req in r2.items()}
    replies["lab-00"] = old_unmask["lab-00"]
    with pytest.raises(RoundAborted):  # lab-00's masks with the rejected lab-03 cannot be removed
        fed.server.collect_unmask(2, replies)
    event = rejection(fed, "lab-00")
    assert (event["round"], event["stage"]) == (2, "unmask") and "past round 1" in event["reason"]


def test_server_rejects_and_records_repeated_stage() -> None:
    fed = Federation.create(5, 4)
    fed.setup()
    fed.server.collect_shares(fed.last["shares"])  # the same S2 replies delivered again
    for lab in fed.params.labs:
        event = rejection(fed, lab)
        assert event["stage"] == "share" and "replay" in event["reason"]
    assert fed.server.labs_needing_setup(fed.params.labs) == []  # nothing was disturbed
    # An old advert replayed into a later setup is refused as stale.
    s1 = fed.server.advertise_requests(["lab-02"])
    new_advert = fed.labs["lab-02"].advertise(s1["lab-02"])
    fed.server.collect_adverts({"lab-02": fed.last["adverts"]["lab-02"]})
    assert "past setup epoch 1" in rejection(fed, "lab-02")["reason"]
    assert new_advert


def test_server_rejects_and_records_malformed_and_tampered_replies() -> None:
    fed = Federation.create(9, 4)  # k = 8, t = 5: three rejected labs still leave a round
    fed.setup()
    r1 = fed.server.train_requests(1, fed.params.labs)
    masked = {
        lab: fed.labs[lab].masked_update(req, np.ones(4, dtype=np.float32), 1) for lab, req in r1.items()
    }
    masked["lab-01"] = (masked["lab-01"][0], b"not a message")
    tampered = masked["lab-02"][0].copy()
    tampered[0] ^= 1
    masked["lab-02"] = (tampered, masked["lab-02"][1])
    masked["lab-03"] = (masked["lab-03"][0][:-1], masked["lab-03"][1])
    r2 = fed.server.collect_masked(1, masked)
    assert "malformed" in rejection(fed, "lab-01")["reason"]
    assert "does not match the SHA-256" in rejection(fed, "lab-02")["reason"]
    assert "contiguous uint32 array of 5" in rejection(fed, "lab-03")["reason"]
    replies = {lab: fed.labs[lab].unmask(req) for lab, req in r2.items()}
    assert fed.server.collect_unmask(1, replies).n_contributors == 6


# --------------------------------------------------------------------------- randomness


def test_no_code_path_seeds_a_non_cryptographic_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    fed = Federation.create(8, 12, restore_each_message=True)
    rounds = [updates_for(fed, seed) for seed in range(4)]  # test data made before the trap is set

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a non-cryptographic random generator was used")

    for name in (
        "seed",
        "random",
        "getrandbits",
        "randbytes",
        "randint",
        "randrange",
        "choice",
        "choices",
        "shuffle",
        "sample",
        "uniform",
        "Random",
    ):
        monkeypatch.setattr(random, name, forbidden)
    for name in (
        "seed",
        "default_rng",
        "RandomState",
        "Generator",
        "random",
        "rand",
        "randn",
        "randint",
        "bytes",
        "choice",
        "shuffle",
        "permutation",
        "normal",
        "uniform",
        "MT19937",
        "PCG64",
    ):
        monkeypatch.setattr(np.random, name, forbidden)
    labs = fed.params.labs
    fed.setup()
    plans = [([labs[1]], []), ([], [labs[2]]), ([labs[3], labs[4]], []), ([], [])]
    for rnd, ((updates, weights), (drop_r1, drop_r2)) in enumerate(zip(rounds, plans, strict=True), start=1):
        fed.setup()
        result = fed.round(rnd, updates, weights, drop_r1=drop_r1, drop_r2=drop_r2)
        expected = plain_average(updates, weights, result.survivors, fed.params.clip)
        assert np.abs(result.average - expected).max() <= result.error_bound


def test_secure_package_never_imports_a_non_cryptographic_generator() -> None:
    package = pathlib.Path(__file__).resolve().parents[2] / "fedlab" / "secure"
    pattern = re.compile(r"^\s*(import random|from random import)|np\.random|numpy\.random", re.MULTILINE)
    offenders = [p.name for p in package.glob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_server_names_a_lab_that_sends_a_wrong_share_and_recovers_without_it() -> None:
    fed = Federation.create(7, 5)  # k = 6, t = 4: one bad holder still leaves 5 honest shares
    fed.setup()
    updates, weights = updates_for(fed, 9)
    r1 = fed.server.train_requests(1, fed.params.labs)
    masked = {lab: fed.labs[lab].masked_update(req, updates[lab], weights[lab]) for lab, req in r1.items()}
    r2 = fed.server.collect_masked(1, masked)
    replies = {lab: fed.labs[lab].unmask(req) for lab, req in r2.items()}
    liar, owner = "lab-00", "lab-01"  # lab-00 holds x = 1, always among the shares used first
    body = body_of(replies[liar])
    wrong = (int.from_bytes(body["shares"][owner], "big") ^ 1).to_bytes(shamir.SHARE_LEN, "big")
    body["shares"] = dict(body["shares"], **{owner: wrong})
    raw = wire.encode(body)
    signature = signing.sign(fed.identities[liar], fed.params.run_id, 1, "unmask", liar, raw)
    replies[liar] = wire.encode({"body": raw, "sig": signature})  # validly signed by the lying lab
    result = fed.server.collect_unmask(1, replies)
    event = rejection(fed, liar)
    assert (
        event["stage"] == "unmask"
        and "seed of 'lab-01' does not match the owner's commitment" in event["reason"]
    )
    expected = plain_average(updates, weights, fed.params.labs, fed.params.clip)
    assert np.abs(result.average - expected).max() <= result.error_bound
