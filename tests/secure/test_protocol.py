"""The secure-aggregation protocol end to end: parameters, correctness under dropouts,
re-setup, late joins, state export, message sizes, and fuzzed messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlab.errors import ConfigError, ProtocolError, RoundAborted
from fedlab.secure import wire
from fedlab.secure.protocol import LabSession, SecAggParams
from tests.secure.federation import Federation, Transcript, lab_names, plain_average, record_transcript

# --------------------------------------------------------------------------- parameters


def test_default_parameters() -> None:
    for n, k in [(2, 1), (3, 2), (5, 4), (20, 19), (21, 14), (50, 16), (1000, 24)]:
        params = SecAggParams.default_for("run", lab_names(n), 2)
        assert (params.neighbours, params.threshold) == (k, k // 2 + 1)
        assert 2 * params.threshold > params.neighbours
    params = SecAggParams.default_for("run", lab_names(4), 3)
    assert (params.clip, params.max_weight, params.max_labs, params.min_labs) == (8.0, 1 << 16, 4, 3)
    # Headroom for exactly the roster: 50 labs get f = 6 instead of f = 2 for max_labs = 1000.
    assert SecAggParams.default_for("run", lab_names(50), 2).encoder.frac_bits == 6
    assert SecAggParams("run", lab_names(50), 16, 9, 2).encoder.frac_bits == 2


@pytest.mark.parametrize(
    ("labs", "k", "t", "min_labs", "match"),
    [
        (5, 4, 2, 2, "k/2 < t"),  # t = k/2 would let a lying server unmask a lab
        (5, 4, 5, 2, "k/2 < t"),
        (5, 5, 3, 2, "between 1 and n - 1"),
        (5, 0, 1, 2, "between 1 and n - 1"),
        (7, 3, 2, 2, "odd neighbour count"),
        (5, 4, 3, 1, "min_labs"),
        (5, 4, 3, 6, "min_labs"),
        (1, 1, 1, 2, "at least 2 labs"),
    ],
)
def test_invalid_parameters_are_refused(labs: int, k: int, t: int, min_labs: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SecAggParams("run", lab_names(labs), k, t, min_labs)


def test_other_invalid_parameters() -> None:
    with pytest.raises(ConfigError, match="twice"):
        SecAggParams("run", ("a", "a", "b"), 2, 2, 2)
    with pytest.raises(ConfigError, match="max_labs"):
        SecAggParams("run", lab_names(5), 4, 3, 2, max_labs=4)
    with pytest.raises(ConfigError, match="fractional bits"):
        SecAggParams("run", lab_names(5), 4, 3, 2, clip=1e9)
    with pytest.raises(ConfigError, match="run_id"):
        SecAggParams("", lab_names(5), 4, 3, 2)


@pytest.mark.parametrize(("n", "k"), [(5, 4), (21, 14), (22, 7), (30, 10), (50, 16), (64, 9)])
def test_neighbour_graph_is_regular_symmetric_and_deterministic(n: int, k: int) -> None:
    params = SecAggParams("run-x", lab_names(n), k, k // 2 + 1, 2)
    again = SecAggParams("run-x", lab_names(n), k, k // 2 + 1, 2)
    for lab in params.labs:
        neighbours = params.neighbours_of(lab)
        assert len(set(neighbours)) == len(neighbours) == k
        assert lab not in neighbours
        assert neighbours == again.neighbours_of(lab)
        for other in neighbours:
            assert lab in params.neighbours_of(other)
    if k < n - 1:  # another run id gives another (unpredictable in advance) graph
        other_run = SecAggParams("run-y", lab_names(n), k, k // 2 + 1, 2)
        assert any(params.neighbours_of(x) != other_run.neighbours_of(x) for x in params.labs)
    with pytest.raises(ProtocolError):
        params.neighbours_of("stranger")


# --------------------------------------------------------------------------- correctness


def random_round(rng: np.random.Generator, fed: Federation) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    n = fed.vector_len
    scale = float(rng.choice([0.01, 1.0, 6.0, 20.0]))
    updates = {lab: (rng.standard_normal(n) * scale).astype(np.float32) for lab in fed.params.labs}
    weights = {lab: int(rng.integers(1, fed.params.max_weight + 1)) for lab in fed.params.labs}
    return updates, weights


def check_result(fed: Federation, result, updates, weights, delivered: set[str]) -> None:  # noqa: ANN001
    assert set(result.survivors) <= delivered
    assert result.n_contributors == len(result.survivors) >= fed.params.min_labs
    assert result.total_weight == sum(weights[lab] for lab in result.survivors)
    expected = plain_average(updates, weights, result.survivors, fed.params.clip)
    error = np.abs(result.average - expected).max()
    bound = fed.params.encoder.error_bound(result.n_contributors, result.total_weight)
    assert error <= bound == result.error_bound
    t = fed.params.threshold
    for lab in result.survivors:  # each survivor's seed had t surviving holders
        assert len(set(fed.params.neighbours_of(lab)) & set(result.survivors)) >= t


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_small_federations_without_dropouts(n: int) -> None:
    rng = np.random.default_rng(n)
    fed = Federation.create(n, 12)
    fed.setup()
    for rnd in (1, 2, 3):
        updates, weights = random_round(rng, fed)
        result = fed.round(rnd, updates, weights)
        check_result(fed, result, updates, weights, set(fed.params.labs))
        assert result.survivors == fed.params.labs and result.dropped == ()
        assert fed.server.labs_needing_setup(fed.params.labs) == []  # steady state: 2 exchanges
    assert fed.server.events == []


def test_fifty_labs_full_secagg_with_dropouts_and_resetup() -> None:
    rng = np.random.default_rng(50)
    fed = Federation.create(50, 20, neighbours=49, min_labs=10)
    t = fed.params.threshold
    assert t == 25
    fed.setup()
    labs = list(fed.params.labs)
    scenarios = [
        (labs[:24], []),  # the most R1 dropouts the graph tolerates: k - t = 24
        ([], labs[30:40]),  # R2 dropouts with no R1 dropouts are harmless
        (labs[40:45], []),  # dropped labs of round 1 have re-keyed and contribute again
    ]
    for rnd, (drop_r1, drop_r2) in enumerate(scenarios, start=1):
        needing = fed.server.labs_needing_setup(labs)
        if rnd > 1:
            previous_dropped = set(scenarios[rnd - 2][0])
            assert set(needing) == previous_dropped
        fed.setup()
        updates, weights = random_round(rng, fed)
        result = fed.round(rnd, updates, weights, drop_r1=drop_r1, drop_r2=drop_r2)
        check_result(fed, result, updates, weights, set(labs) - set(drop_r1))
        assert set(result.dropped) == set(drop_r1)
        assert set(result.survivors) == set(labs) - set(drop_r1)


def test_too_many_dropouts_abort_with_a_recorded_reason() -> None:
    fed = Federation.create(8, 5)  # k = 7, t = 4: at most 3 R1 dropouts
    fed.setup()
    rng = np.random.default_rng(0)
    updates, weights = random_round(rng, fed)
    with pytest.raises(RoundAborted, match="round 1.*can be unmasked"):
        fed.round(1, updates, weights, drop_r1=fed.params.labs[:4])
    aborted = [e for e in fed.server.events if e["event"] == "aborted"]
    assert aborted and aborted[-1]["round"] == 1 and aborted[-1]["stage"] == "train"
    dropped = {e["lab"] for e in fed.server.events if e["event"] == "dropped"}
    assert dropped == set(fed.params.labs[:4])
    # The federation recovers: the dropped labs re-key and the next round succeeds.
    fed.setup()
    updates, weights = random_round(rng, fed)
    result = fed.round(2, updates, weights)
    check_result(fed, result, updates, weights, set(fed.params.labs))


def test_unmask_dropout_with_a_dropped_neighbour_aborts_with_reason() -> None:
    fed = Federation.create(6, 5)  # k = 5, t = 3
    fed.setup()
    labs = fed.params.labs
    updates, weights = random_round(np.random.default_rng(1), fed)
    with pytest.raises(RoundAborted, match="did not answer"):
        fed.round(1, updates, weights, drop_r1=[labs[0]], drop_r2=[labs[1]])
    assert fed.server.events[-1]["event"] == "aborted"
    assert fed.server.events[-1]["stage"] == "unmask"


def test_too_few_available_labs_abort_before_training() -> None:
    fed = Federation.create(5, 4, min_labs=4)
    fed.setup()
    with pytest.raises(RoundAborted, match="min_labs = 4"):
        fed.server.train_requests(1, fed.params.labs[:3])
    assert fed.server.events[-1]["event"] == "aborted"
    # Nothing was sent, so the same round number can be tried again.
    assert set(fed.server.train_requests(1, fed.params.labs)) == set(fed.params.labs)


def test_late_joining_lab() -> None:
    rng = np.random.default_rng(3)
    fed = Federation.create(6, 7)
    labs = fed.params.labs
    fed.setup(available=labs[:5])
    updates, weights = random_round(rng, fed)
    result = fed.round(1, updates, weights, available=labs[:5])
    check_result(fed, result, updates, weights, set(labs[:5]))
    assert fed.setup() == [labs[5]]  # only the newcomer runs setup
    updates, weights = random_round(rng, fed)
    result = fed.round(2, updates, weights)
    check_result(fed, result, updates, weights, set(labs))
    assert result.survivors == labs


def test_sampled_rounds_use_each_seed_once() -> None:
    """Labs that sit out a round keep their next seed for the round they join."""
    rng = np.random.default_rng(4)
    fed = Federation.create(7, 6)
    fed.setup()
    labs = fed.params.labs
    for rnd, chosen in enumerate([labs, labs[:5], labs[2:], labs], start=1):
        updates, weights = random_round(rng, fed)
        result = fed.round(rnd, updates, weights, available=chosen)
        check_result(fed, result, updates, weights, set(chosen))
        assert fed.server.labs_needing_setup(labs) == []


def test_state_export_and_restore_before_every_message() -> None:
    rng = np.random.default_rng(5)
    fed = Federation.create(9, 10, restore_each_message=True)
    fed.setup()
    labs = fed.params.labs
    for rnd, drop in enumerate([[labs[0]], [], [labs[3], labs[4]], []], start=1):
        fed.setup()
        updates, weights = random_round(rng, fed)
        result = fed.round(rnd, updates, weights, drop_r1=drop)
        check_result(fed, result, updates, weights, set(labs) - set(drop))


def test_saved_state_is_authenticated_and_bound_to_the_lab() -> None:
    transcript = record_transcript()
    fed, lab = transcript.fed, transcript.lab
    state = transcript.state_before["unmask"]
    other = fed.params.labs[1]
    with pytest.raises(ProtocolError, match="does not authenticate"):
        LabSession.restore(state, fed.params, other, fed.identities[other], fed.roster)
    tampered = state[:-1] + bytes([state[-1] ^ 1])
    with pytest.raises(ProtocolError, match="does not authenticate"):
        LabSession.restore(tampered, fed.params, lab, fed.identities[lab], fed.roster)
    with pytest.raises(ProtocolError, match="not a fedlab lab state"):
        LabSession.restore(b"garbage", fed.params, lab, fed.identities[lab], fed.roster)
    assert b"seed" not in state and fed.identities[lab].private_bytes_raw() not in state


def test_bytes_sent_per_round_are_close_to_float32_size() -> None:
    vector_len = 250_000
    fed = Federation.create(10, vector_len)
    fed.setup()
    labs = fed.params.labs
    r1 = fed.server.train_requests(1, labs)
    update = np.linspace(-1, 1, vector_len, dtype=np.float32)
    masked = {lab: fed.labs[lab].masked_update(req, update, 5) for lab, req in r1.items()}
    r2 = fed.server.collect_masked(1, masked)
    replies = {lab: fed.labs[lab].unmask(req) for lab, req in r2.items()}
    fed.server.collect_unmask(1, replies)
    for lab in labs:
        vector, header = masked[lab]
        sent = vector.nbytes + len(header) + len(replies[lab])
        assert vector.dtype == np.uint32 and vector.nbytes == 4 * (vector_len + 1)
        assert sent <= 1.05 * 4 * vector_len, sent


def test_lab_validates_the_update_against_the_request() -> None:
    transcript = record_transcript()
    session = transcript.session("train")
    for bad in (np.zeros(5, dtype=np.float32), np.zeros((6, 1), dtype=np.float32), [0.0] * 6):
        with pytest.raises(ProtocolError, match="1-D array of 6"):
            session.masked_update(transcript.r1_request, bad, 1)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="weight"):
        session.masked_update(transcript.r1_request, np.zeros(6, dtype=np.float32), 0)
    with pytest.raises(ProtocolError, match="non-finite"):
        session.masked_update(transcript.r1_request, np.full(6, np.nan, dtype=np.float32), 1)
    # None of the refusals changed the state: the valid request still works.
    vector, _ = session.masked_update(transcript.r1_request, np.zeros(6, dtype=np.float32), 1)
    assert vector.shape == (7,)


# --------------------------------------------------------------------------- random federations


def prune(labs: set[str], params: SecAggParams) -> set[str]:
    """The specification's rule: a lab can be unmasked only with t surviving neighbours."""
    current = set(labs)
    while True:
        keep = {lab for lab in current if len(set(params.neighbours_of(lab)) & current) >= params.threshold}
        if keep == current:
            return current
        current = keep


@st.composite
def federation_specs(draw: st.DrawFn) -> dict:
    n = draw(st.integers(2, 50), label="labs")
    if n > 20:  # SecAgg+ graphs keep large federations cheap: cost grows with n * k
        k = draw(st.integers(2, 12), label="k")
    elif n > 3 and draw(st.booleans(), label="sparse"):
        k = draw(st.integers(2, n - 2), label="k")
    else:
        k = n - 1
    if k < n - 1 and k % 2 == 1 and n % 2 == 1:
        k -= 1
    t = draw(st.integers(k // 2 + 1, k), label="t")
    min_labs = draw(st.integers(2, min(n, 4)), label="min_labs")
    return {
        "n": n,
        "k": k,
        "t": t,
        "min_labs": min_labs,
        "vector_len": draw(st.integers(1, 30), label="vector_len"),
        "seed": draw(st.integers(0, 2**32 - 1), label="seed"),
    }


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(federation_specs(), st.data())
def test_random_federations_with_dropouts_at_every_stage(spec: dict, data: st.DataObject) -> None:
    fed = Federation.create(
        spec["n"],
        spec["vector_len"],
        neighbours=spec["k"],
        threshold=spec["t"],
        min_labs=spec["min_labs"],
        restore_each_message=data.draw(st.booleans(), label="restore"),
    )
    params = fed.params
    labs = list(params.labs)
    rng = np.random.default_rng(spec["seed"])
    max_drop = params.neighbours - params.threshold
    fed.setup()
    for rnd in range(1, 4):
        needing = fed.server.labs_needing_setup(labs)
        drop_setup = data.draw(st.lists(st.sampled_from(needing), unique=True, max_size=1)) if needing else []
        fed.setup(drop_s1=drop_setup[:1], drop_s2=drop_setup[1:])
        updates, weights = random_round(rng, fed)
        available = [lab for lab in labs if data.draw(st.integers(0, 9), label=f"avail {lab}") > 0]
        try:
            r1 = fed.server.train_requests(rnd, available)
        except RoundAborted:
            assert fed.server.events[-1]["event"] == "aborted"
            continue
        participants = set(r1)
        for request in r1.values():
            assert set(wire.decode(request)["participants"]) == participants
        assert len(participants) >= params.min_labs and prune(participants, params) == participants
        drop_r1 = data.draw(
            st.lists(st.sampled_from(sorted(participants)), unique=True, max_size=max_drop + 1)
        )
        masked = {}
        for lab, request in r1.items():
            session = fed.lab(lab)
            masked_vector = session.masked_update(request, updates[lab], weights[lab])
            fed.keep(lab, session)
            if lab not in drop_r1:
                masked[lab] = masked_vector
        try:
            r2 = fed.server.collect_masked(rnd, masked)
        except RoundAborted:
            assert (
                len(prune(set(masked), params)) < params.min_labs
                or fed.server.events[-1]["event"] == "aborted"
            )
            continue
        survivors = set(r2)
        assert survivors <= set(masked) and prune(survivors, params) == survivors
        dropped = participants - survivors
        drop_r2 = set(data.draw(st.lists(st.sampled_from(sorted(survivors)), unique=True, max_size=3)))
        replies = {}
        asked: dict[str, set[str]] = {lab: set() for lab in survivors}
        for lab, request in r2.items():
            for owner in wire.decode(request)["seeds"]:
                asked[owner].add(lab)
            if lab in drop_r2:
                continue
            session = fed.lab(lab)
            replies[lab] = session.unmask(request)
            fed.keep(lab, session)
        answered = set(replies)
        must_abort = any(len(asked[v] & answered) < params.threshold for v in survivors) or any(
            set(params.neighbours_of(u)) & dropped for u in survivors - answered
        )
        try:
            result = fed.server.collect_unmask(rnd, replies)
        except RoundAborted:
            assert must_abort
            assert fed.server.events[-1]["event"] == "aborted" and fed.server.events[-1]["round"] == rnd
            continue
        assert not must_abort
        check_result(fed, result, updates, weights, set(masked))
        assert set(result.survivors) == survivors and set(result.dropped) == dropped
        # Dropped labs must re-key before they can contribute again.
        assert dropped <= set(fed.server.labs_needing_setup(labs))


def test_full_graph_tolerates_k_minus_t_dropouts_in_every_round() -> None:
    """Liveness: with at most k - t dropouts per round (spread over R1 and, when nobody
    dropped in R1, R2) every round of a full-graph federation succeeds."""
    rng = np.random.default_rng(11)
    for n in (4, 5, 9, 12):
        fed = Federation.create(n, 9)
        labs = list(fed.params.labs)
        budget = fed.params.neighbours - fed.params.threshold
        fed.setup()
        for rnd in range(1, 6):
            fed.setup()
            updates, weights = random_round(rng, fed)
            count = int(rng.integers(0, budget + 1))
            chosen = [labs[i] for i in rng.choice(n, size=count, replace=False)]
            in_r1 = bool(rng.integers(0, 2)) or rnd == 1
            result = fed.round(
                rnd, updates, weights, drop_r1=chosen if in_r1 else [], drop_r2=[] if in_r1 else chosen
            )
            check_result(fed, result, updates, weights, set(labs) - (set(chosen) if in_r1 else set()))


# --------------------------------------------------------------------------- fuzzed messages


@pytest.fixture(scope="module")
def transcript() -> Transcript:
    return record_transcript()


def mutate(raw: bytes, data: st.DataObject) -> bytes:
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        action = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "random"]))
        position = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if action == "flip" and buf:
            buf[position] ^= data.draw(st.integers(1, 255))
        elif action == "truncate":
            del buf[position:]
        elif action == "insert":
            buf[position:position] = data.draw(st.binary(min_size=1, max_size=4))
        elif action == "delete" and buf:
            del buf[position]
        elif action == "random":
            return data.draw(st.binary(max_size=300))
    return bytes(buf)


LAB_STAGES = {
    "advertise": ("s1_request", lambda s, raw: s.advertise(raw)),
    "share": ("s2_request", lambda s, raw: s.share_keys(raw)),
    "train": ("r1_request", lambda s, raw: s.masked_update(raw, np.zeros(6, dtype=np.float32), 1)),
    "unmask": ("r2_request", lambda s, raw: s.unmask(raw)),
}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stage=st.sampled_from(sorted(LAB_STAGES)), data=st.data())
def test_lab_decoders_raise_only_protocol_error(
    transcript: Transcript, stage: str, data: st.DataObject
) -> None:
    attribute, call = LAB_STAGES[stage]
    raw = mutate(getattr(transcript, attribute), data)
    session = transcript.session(stage)
    try:
        call(session, raw)
    except ProtocolError:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_state_decoder_raises_only_protocol_error(transcript: Transcript, data: st.DataObject) -> None:
    fed, lab = transcript.fed, transcript.lab
    raw = mutate(transcript.state_before["unmask"], data)
    try:
        LabSession.restore(raw, fed.params, lab, fed.identities[lab], fed.roster)
    except ProtocolError:
        pass


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stage=st.sampled_from(["advert", "share", "train", "unmask"]), data=st.data())
def test_server_decoders_reject_and_record_malformed_replies(
    transcript: Transcript, stage: str, data: st.DataObject
) -> None:
    server = transcript.server_before(stage)
    lab = transcript.lab
    events_before = len(server.events)
    try:
        if stage == "advert":
            replies = dict(transcript.advert, **{lab: mutate(transcript.advert[lab], data)})
            server.collect_adverts(replies)
        elif stage == "share":
            replies = dict(transcript.share_reply, **{lab: mutate(transcript.share_reply[lab], data)})
            server.collect_shares(replies)
        elif stage == "train":
            vector, header = transcript.masked[lab]
            if data.draw(st.booleans(), label="mutate vector"):
                vector = vector.copy()
                vector[data.draw(st.integers(0, len(vector) - 1))] ^= 1
            else:
                header = mutate(header, data)
            server.collect_masked(1, dict(transcript.masked, **{lab: (vector, header)}))
        else:
            replies = dict(transcript.unmask_reply, **{lab: mutate(transcript.unmask_reply[lab], data)})
            server.collect_unmask(1, replies)
    except RoundAborted:
        pass
    rejected = [e for e in server.events[events_before:] if e["lab"] == lab]
    # Either the mutation left a valid message, or it was rejected and recorded.
    assert all(e["event"] == "rejected" and e["reason"] for e in rejected)


def test_server_reply_mapping_types_are_checked(transcript: Transcript) -> None:
    server = transcript.server_before("train")
    replies = dict(transcript.masked)
    replies[transcript.lab] = "not a tuple"  # type: ignore[assignment]
    server.collect_masked(1, replies)
    assert server.events[-1]["event"] == "rejected" and "reply must be" in server.events[-1]["reason"]


def test_server_calls_out_of_order_are_refused(transcript: Transcript) -> None:
    server = transcript.server_before("train")
    with pytest.raises(ProtocolError, match="each stage is collected once"):
        server.collect_unmask(1, {})
    server.collect_masked(1, transcript.masked)
    with pytest.raises(ProtocolError, match="each stage is collected once"):
        server.collect_masked(1, transcript.masked)
    with pytest.raises(ProtocolError, match="not after the last round"):
        server.train_requests(1, transcript.fed.params.labs)


def test_replaying_recorded_messages_into_fresh_servers_is_deterministic() -> None:
    # The fuzz tests rebuild servers from recorded messages: replaying the same valid
    # messages into two fresh servers must give the same, correct aggregate.
    t = record_transcript()
    results = [t.server_before("unmask").collect_unmask(1, t.unmask_reply) for _ in range(2)]
    np.testing.assert_array_equal(results[0].weighted_sum, results[1].weighted_sum)
    expected = plain_average(t.updates, t.weights, t.fed.params.labs, t.fed.params.clip)
    assert np.abs(results[0].average - expected).max() <= results[0].error_bound
    assert results[0].total_weight == sum(t.weights.values())
