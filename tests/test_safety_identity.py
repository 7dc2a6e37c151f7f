"""Names nobody can borrow: rater tokens, look-alike names, signed-in names, undo of one's own votes only."""

from __future__ import annotations

import sqlite3

import pytest

from feedback import FeedbackStore
from feedback import identity
from tests.fixtures_rm import fill_store


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "fb") as s:
        fill_store(s, n_prompts=2, n_seeds=5)
        yield s


def pairs(store, n):
    """`n` distinct same-prompt pairs."""
    by_prompt: dict[str, list[str]] = {}
    for s in store.samples():
        by_prompt.setdefault(s["prompt"], []).append(s["id"])
    out = [(ids[i], ids[j]) for ids in by_prompt.values() for i in range(len(ids)) for j in range(i + 1, len(ids))]
    assert len(out) >= n
    return out[:n]


def table(store, sql):
    return store._db().execute(sql).fetchall()


def snapshot_rows(store):
    return table(store, "SELECT * FROM comparisons ORDER BY id"), table(store, "SELECT * FROM rater_tokens ORDER BY name")


def test_first_vote_claims_the_name_and_later_votes_need_its_token(store):
    (a, b), (c, d), (e, f) = pairs(store, 3)
    row = store.vote(identity.typed("Alice"), a, b, "a", "c1")
    token = row["rater_token"]
    assert row["created"] and row["rater"] == "alice" and identity.well_formed_token(token)
    # only a hash is stored
    assert table(store, "SELECT name, token_hash FROM rater_tokens") == [("alice", identity.token_hash(token))]
    assert token not in str(table(store, "SELECT * FROM rater_tokens"))
    before = snapshot_rows(store)
    for bad in (None, "x" * 32, token[:-1] + ("A" if token[-1] != "A" else "B")):
        with pytest.raises(PermissionError, match="taken"):
            store.vote(identity.typed("alice", bad), c, d, "b", "c2")
    assert snapshot_rows(store) == before
    ok = store.vote(identity.typed("ALICE", token), c, d, "b", "c2")
    assert ok["created"] and ok["rater_token"] == token and store.counts()["comparisons"] == 2


def test_look_alike_and_reserved_names_are_refused(store):
    (a, b), (c, d) = pairs(store, 2)
    store.vote(identity.typed("alice"), a, b, "a", "c1")
    before = snapshot_rows(store)
    look_alikes = ["\u0430lice",  # Cyrillic a
                   "al\u0456ce",  # Cyrillic i
                   "\u0430l\u0456\u0441\u0435",  # all Cyrillic
                   "ali\u200bce",  # zero-width space (stripped: the same name, so it needs the token)
                   "\uff41\uff4c\uff49\uff43\uff45",  # full width: NFKC makes it "alice"
                   "AIice",  # capital I for l
                   "a1ice", "alicé", "ALICE"]
    for i, name in enumerate(look_alikes):
        with pytest.raises(PermissionError):
            store.vote(identity.typed(name), c, d, "a", f"x-{i}")
    for name in ("hf:alice", "HF:bob", "hf\uff1abob", "\u04bbf:bob",  # typed hf: names, incl. full width / Cyrillic h
                 "bob\x00", "bob\nsmith", "bob\x1b[31m", "\ue000bob", "", "   ", "\u200b", "x" * 65, "y" * 5000, 17):
        with pytest.raises(ValueError):
            store.vote(identity.typed(name), c, d, "a", "x-bad")
    assert snapshot_rows(store) == before
    # a different name is fine, and so is the longest allowed one
    assert store.vote(identity.typed("bob"), c, d, "a", "c2")["created"]
    assert store.vote(identity.typed("z" * identity.MAX_RATER_NAME), c, d, "a", "c3")["created"]


def test_skeleton_groups_look_alikes_and_separates_different_names():
    same = ["paypal", "p\u0430yp\u0430l", "PAYPAL", "pay\u200dpal", "ｐａｙｐａｌ", "paypaI"]
    assert len({identity.skeleton(n) for n in same}) == 1
    different = ["alice", "bob", "carol", "alex", "alicia", "ann"]
    assert len({identity.skeleton(n) for n in different}) == len(different)


def test_signed_in_names_need_no_token_and_cannot_be_typed(store):
    (a, b), (c, d) = pairs(store, 2)
    row = store.vote(identity.signed_in("alice"), a, b, "a", "c1")
    assert row["rater"] == "hf:alice" and row["rater_token"] is None
    assert store.vote(identity.signed_in("alice"), c, d, "b", "c2")["created"]
    with pytest.raises(ValueError):
        identity.typed("hf:alice")
    for bad in ("", "al ice", "-x", "a" * 200, "ali\u0441e", "alice\n", "alice\r\n"):
        with pytest.raises(ValueError):
            identity.signed_in(bad)
    # a Rater built by hand cannot pass a typed name off as signed in, nor skip normalisation
    with pytest.raises(ValueError):
        store.vote(identity.Rater("alice", signed_in=True), c, d, "a", "c3")
    with pytest.raises(ValueError):
        store.vote(identity.Rater("Alice"), c, d, "a", "c3")
    assert store.counts()["comparisons"] == 2


def test_the_same_pair_by_the_same_rater_is_recorded_once(store):
    (a, b), = pairs(store, 1)
    tok = store.vote(identity.typed("carol"), a, b, "a", "c1")["rater_token"]
    for i, (x, y, choice) in enumerate([(a, b, "a"), (b, a, "b"), (a, b, "tie")]):
        again = store.vote(identity.typed("carol", tok), x, y, choice, f"new-{i}")
        assert not again["created"] and again["choice"] == "a"  # the first answer stands
    assert store.counts()["comparisons"] == 1
    # another rater's judgement of the same pair is a separate row
    assert store.vote(identity.typed("dave"), a, b, "b", "c2")["created"]
    # after an undo, the pair may be answered again
    store.undo_vote(identity.typed("carol", tok))
    assert store.vote(identity.typed("carol", tok), a, b, "b", "c3")["created"]
    assert store.counts()["comparisons"] == 2


def test_undo_touches_only_the_callers_own_votes(store):
    (a, b), (c, d), (e, f) = pairs(store, 3)
    alice = store.vote(identity.typed("alice"), a, b, "a", "c1")["rater_token"]
    store.vote(identity.typed("alice", alice), c, d, "a", "c2")
    bob = store.vote(identity.typed("bob"), e, f, "b", "c3")["rater_token"]
    before = snapshot_rows(store)
    for _ in range(13):  # the attack: undo alice's votes without her token
        with pytest.raises(PermissionError):
            store.undo_vote(identity.typed("alice"))
        with pytest.raises(PermissionError):
            store.undo_vote(identity.typed("alice", bob))
    assert snapshot_rows(store) == before
    # bob cannot retract alice's vote by id either
    alice_first = table(store, "SELECT id FROM comparisons WHERE client_id = 'c1'")[0][0]
    assert store.undo_vote(identity.typed("bob", bob), comparison_id=alice_first) is None
    assert store.undo_vote(identity.typed("alice", alice))["client_id"] == "c2"
    assert store.undo_vote(identity.typed("alice", alice), comparison_id=alice_first)["client_id"] == "c1"
    assert store.undo_vote(identity.typed("alice", alice)) is None
    assert [r["rater"] for r in store.comparisons()] == ["bob"]
    # an unclaimed name has nothing to undo
    assert store.undo_vote(identity.typed("nobody")) is None


def test_a_failed_first_vote_claims_nothing(store):
    (a, b), = pairs(store, 1)
    with pytest.raises(ValueError):
        store.vote(identity.typed("erin"), a, "no-such-sample", "a", "c1")
    assert not store.rater_claimed("erin")
    assert store.vote(identity.typed("erin"), a, b, "a", "c1")["created"]
    assert store.rater_claimed("Erin")


def test_a_client_id_of_someone_else_is_refused_without_naming_them(store):
    (a, b), (c, d) = pairs(store, 2)
    store.vote(identity.typed("alice"), a, b, "a", "shared-id")
    with pytest.raises(ValueError) as e:
        store.vote(identity.typed("mallory"), a, b, "a", "shared-id")
    assert "alice" not in str(e.value)
    assert not store.rater_claimed("mallory")


def test_names_with_votes_from_before_tokens_are_nobody_to_take(store):
    """Older databases and imports hold votes without tokens: their names (and look-alikes) can't be claimed."""
    (a, b), (c, d) = pairs(store, 2)
    store.record_comparison(a, b, "a", "grace", "legacy-1")  # the trusted path: imports, simulated raters
    before = snapshot_rows(store)
    for name in ("grace", "Grace", "gr\u0430ce"):
        with pytest.raises(PermissionError, match="without a rater_token|looks too much like"):
            store.vote(identity.typed(name), c, d, "a", "c-new")
    with pytest.raises(PermissionError, match="no rater_token"):
        store.undo_vote(identity.typed("grace"))
    assert snapshot_rows(store) == before


def test_a_token_survives_a_restore_that_lost_the_claim(store, tmp_path):
    """A browser that holds a token for a name the database does not know (restored from an older
    snapshot) keeps using it: the first vote claims the name with the token it presents."""
    (a, b), (c, d) = pairs(store, 2)
    tok = identity.new_token()
    assert store.vote(identity.typed("heidi", tok), a, b, "a", "c1")["rater_token"] == tok
    assert store.vote(identity.typed("heidi", tok), c, d, "a", "c2")["created"]
    assert not identity.well_formed_token(tok + "\n")


def test_migration_upgrades_an_existing_database(tmp_path):
    """A database made before rater tokens gets the table on open, and its votes are kept."""
    with FeedbackStore(tmp_path / "old") as s:
        fill_store(s, n_prompts=1, n_seeds=3)
        ids = [x["id"] for x in s.samples()]
        s.record_comparison(ids[0], ids[1], "a", "old-rater", "c0")
    conn = sqlite3.connect(tmp_path / "old" / "feedback.db")
    conn.execute("DROP TABLE rater_tokens")
    conn.execute("DELETE FROM _migrations WHERE name = '0004_rater_tokens'")
    for idx in ("comparisons_sample_a", "comparisons_sample_b", "samples_created"):
        conn.execute(f"DROP INDEX {idx}")
    conn.commit()
    conn.close()
    with FeedbackStore(tmp_path / "old") as s:
        assert s.counts()["comparisons"] == 1
        assert s.vote(identity.typed("new"), ids[1], ids[2], "b", "c1")["created"]
