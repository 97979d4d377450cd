"""PSI through run_simulation: exactly the shared ids, in one order on every party, and no id
in anything the server receives or sends."""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError, NodeError, RoundFailed
from consortium.core.grid import Grid, GridWrapper
from consortium.core.message import Content, Message
from consortium.server import ServerApp, ServerContext
from consortium.simulation import run_simulation
from consortium.vertical import NODE_SECRET, run_psi
from consortium.vertical.psi_state import decode_ids

from .conftest import psi_client, simulate_psi

PSIAPP = Path(__file__).resolve().parent / "psiapp"


def _ids(rng: random.Random, universe: int, count: int, prefix: str = "id") -> list[str]:
    return [f"{prefix}-{i:06d}" for i in rng.sample(range(universe), count)]


def _check(sets: dict[str, Sequence[str]], **kwargs: object) -> list[str]:
    """Run PSI over ``sets``; check every party kept exactly the shared ids, sorted, with
    their first rows; return them."""
    run = simulate_psi(sets, **kwargs)  # type: ignore[arg-type]
    expected = sorted(set.intersection(*(set(s) for s in sets.values())))
    assert run.summary is not None
    assert run.summary.intersection == len(expected)
    assert not run.summary.tagged  # no psi-secret here: nothing to tag the result with
    assert run.summary.sizes == {n: len(set(s)) for n, s in sets.items()}
    for node, own in sets.items():
        assert run.ids[node] == expected, node
        assert [own[r] for r in run.rows[node]] == expected, node
        assert [list(own).index(i) for i in expected] == run.rows[node].tolist(), node
    return expected


@pytest.mark.parametrize("seed", [1, 2])
def test_two_parties_find_exactly_the_shared_ids(seed: int) -> None:
    rng = random.Random(seed)
    a, b = _ids(rng, 300, 120), _ids(rng, 300, 90)
    shared = _check({"hospital": a, "lab": b})
    assert 0 < len(shared) < 90  # a partial overlap: the case the others bracket


def test_empty_overlap_full_overlap_and_an_empty_side() -> None:
    rng = random.Random(3)
    a = _ids(rng, 10_000, 40)
    other = [f"other-{i}" for i in range(35)]
    assert _check({"hospital": a, "lab": other}) == []
    assert _check({"hospital": a, "lab": list(reversed(a))}) == sorted(a)
    assert _check({"hospital": a, "lab": []}) == []
    assert _check({"hospital": [], "lab": a}) == []
    assert _check({"hospital": [], "lab": []}) == []


@pytest.mark.parametrize("hub", ["hospital", "clinic"])
def test_three_parties_share_one_aligned_order(hub: str) -> None:
    rng = random.Random(4)
    sets = {"hospital": _ids(rng, 200, 130), "cardiology": _ids(rng, 200, 140),
            "clinic": _ids(rng, 200, 150)}  # fmt: skip
    shared = _check(sets, hub=hub)
    # the hub's pairwise overlaps are larger than the three-way one: it is not leaked out
    assert len(shared) < len(set(sets["hospital"]) & set(sets["cardiology"]))


def test_four_parties_with_chunks_of_one_point() -> None:
    rng = random.Random(5)
    sets = {f"p{i}": _ids(rng, 40, 30) for i in range(4)}
    assert _check(sets, chunk_size=1)


def test_repeated_ids_count_once_and_align_their_first_row() -> None:
    a = ["x", "y", "x", "z", "y", "w"]
    b = ["z", "z", "y", "q"]
    run = simulate_psi({"hospital": a, "lab": b})
    assert run.summary is not None and run.summary.sizes == {"hospital": 4, "lab": 3}
    assert run.ids == {"hospital": ["y", "z"], "lab": ["y", "z"]}
    assert run.rows["hospital"].tolist() == [1, 3]
    assert run.rows["lab"].tolist() == [2, 0]


def test_unicode_and_empty_string_ids_match_byte_for_byte() -> None:
    a = ["", "Zoë", "zoe", "李", "a\x00b"]
    b = ["Zoë", "李", "ZOE", "a\x00b", ""]
    assert _check({"hospital": a, "lab": b}) == sorted(["", "Zoë", "李", "a\x00b"])


class SpyGrid(GridWrapper):
    """A grid that keeps the encoding of every message the server sends and receives."""

    def __init__(self, inner: Grid) -> None:
        super().__init__(inner)
        self.seen: list[bytes] = []

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        self.seen += [bytes(m.to_bytes()) for m in messages]
        for reply in self.inner.send_and_receive(messages, timeout=timeout):
            self.seen.append(bytes(reply.to_bytes()))
            yield reply

    def push(self, messages: Sequence[Message]) -> None:
        raise AssertionError("PSI uses send_and_receive only")

    def pull(self, timeout: float | None) -> Message | None:
        raise AssertionError("PSI uses send_and_receive only")


def _leaks(blob: bytes, ident: str) -> list[str]:
    """The forms of ``ident`` found in ``blob``: itself, or a plain hash of it."""
    raw = ident.encode()
    forms = {"id": raw, "id-utf16": ident.encode("utf-16-le")}
    for name in ("md5", "sha1", "sha256", "sha512", "blake2b", "sha3_256"):
        digest = hashlib.new(name, raw).digest()
        forms[name] = digest
        forms[name + "-hex"] = digest.hex().encode()
    return [form for form, value in forms.items() if value in blob]


def test_the_server_never_sees_an_id_nor_its_hash() -> None:
    rng = random.Random(6)
    sets = {"hospital": _ids(rng, 500, 200, "MRN"), "cardiology": _ids(rng, 500, 200, "MRN"),
            "clinic": _ids(rng, 500, 200, "MRN")}  # fmt: skip
    spies: list[SpyGrid] = []

    def wrap(grid: Grid) -> Grid:
        spies.append(SpyGrid(grid))
        return spies[0]

    # a run whose main ends after PSI: the test's read-back task carries ids by design
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: object) -> None:
        run_psi(grid, run_id="r1", parties=list(sets), chunk_size=64, timeout=60)

    run_simulation(server, psi_client(sets), node_ids=list(sets), grid_wrapper=wrap)
    blob = b"\n".join(spies[0].seen)
    assert len(spies[0].seen) > 20 and len(blob) > 3 * 200 * 32  # every set went by, blinded
    # the hub's answers to matching carry no count: the server learns no pairwise overlap
    replies = [Message.from_bytes(raw) for raw in spies[0].seen]
    matched = [m for m in replies if m.metadata.kind == "psi.hub.match" and m.metadata.reply_to]
    assert matched and all(m.content is not None and m.content.configs == {"config": {}}
                           for m in matched)  # fmt: skip
    every_id = {i for s in sets.values() for i in s}
    assert not {i: f for i in every_id if (f := _leaks(blob, i))}
    # and the check can fail: an id, or its SHA-256, in a message is found
    assert _leaks(blob + b"MRN-000123", "MRN-000123") == ["id"]
    planted = blob + hashlib.sha256(b"MRN-000124").hexdigest().encode()
    assert _leaks(planted, "MRN-000124") == ["sha256-hex"]


def test_processes_backend_keeps_the_result_between_tasks() -> None:
    """Worker processes: the node state (key, shuffle, result) travels encoded between tasks
    and processes, as it does in deployment."""
    sys.path.insert(0, str(PSIAPP))
    try:
        import psi_toy  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(PSIAPP))
    parties = ["cleveland", "hungarian", "switzerland"]
    result = run_simulation(
        psi_toy.server_app, "psi_toy:client_app", node_ids=parties,
        node_config=lambda i, n: {"center": n}, run_config={"parties": ",".join(parties),
        "chunk-size": 40}, backend="processes", workers=2, app_path=[str(PSIAPP)],
    )  # fmt: skip
    expected = sorted(set.intersection(*(set(psi_toy.party_ids(p)) for p in parties)))
    assert len(expected) > 10
    for p in parties:
        own = psi_toy.party_ids(p)
        ids = decode_ids(result.arrays[f"{p}.ids"], result.arrays[f"{p}.ends"])
        assert ids == expected
        assert [own[r] for r in result.arrays[f"{p}.rows"]] == expected


def test_bad_arguments_are_named() -> None:
    grid: Grid = SpyGrid(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="two or more distinct"):
        run_psi(grid, run_id="r", parties=["a"])
    with pytest.raises(ConfigError, match="two or more distinct"):
        run_psi(grid, run_id="r", parties=["a", "a"])
    with pytest.raises(ConfigError, match="hub 'c'"):
        run_psi(grid, run_id="r", parties=["a", "b"], hub="c")
    with pytest.raises(ConfigError, match="chunk_size"):
        run_psi(grid, run_id="r", parties=["a", "b"], chunk_size=0)


def test_a_node_whose_ids_are_not_strings_fails_the_session_by_name() -> None:
    with pytest.raises(NodeError, match=r"'lab' failed psi\.start"):
        simulate_psi({"hospital": ["a"], "lab": [1, 2]})  # type: ignore[list-item]


def test_run_ids_keep_sessions_apart() -> None:
    """The same ids in two runs: no blinded point in common (fresh keys, run-bound hashes)."""
    sets = {"hospital": [f"p{i}" for i in range(50)], "lab": [f"p{i}" for i in range(25, 75)]}
    seen = []
    for _ in range(2):
        spies: list[SpyGrid] = []

        def wrap(grid: Grid, spies: list[SpyGrid] = spies) -> Grid:
            spies.append(SpyGrid(grid))
            return spies[0]

        simulate_psi(sets, grid_wrapper=wrap)
        points = set()
        for raw in spies[0].seen:
            msg = Message.from_bytes(raw)
            if msg.content is not None and "psi" in msg.content.arrays:
                arr = msg.content.arrays["psi"].get("points")
                if arr is not None:
                    points |= {bytes(r) for r in np.asarray(arr)}
        seen.append(points)
    assert len(seen[0]) >= 100 and not seen[0] & seen[1]


class DroppingGrid(SpyGrid):
    """Loses every reply of one kind (a node that never answers)."""

    def __init__(self, inner: Grid, kind: str) -> None:
        super().__init__(inner)
        self.kind = kind

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        for reply in super().send_and_receive(messages, timeout=timeout):
            if reply.metadata.kind != self.kind:
                yield reply


def test_a_party_that_does_not_answer_or_does_not_exist_fails_the_session() -> None:
    sets = {"hospital": ["a", "b"], "lab": ["b", "c"]}
    with pytest.raises(RoundFailed, match=r"'lab' did not answer psi\.blind"):
        simulate_psi(sets, grid_wrapper=lambda grid: DroppingGrid(grid, "psi.blind"))
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: ServerContext) -> None:
        run_psi(grid, run_id=context.run_id, parties=["hospital", "ghost"])

    with pytest.raises(NodeError, match=r"'ghost' failed psi\.start"):
        run_simulation(server, psi_client(sets), node_ids=list(sets))


class TamperingGrid(SpyGrid):
    """Swaps one delivered position for a row that is not shared (a hostile relay)."""

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        changed = []
        for m in messages:
            if m.metadata.kind == "psi.deliver" and m.content is not None:
                got = m.content.arrays["psi"]["positions"].copy()
                got[0] = next(i for i in range(10**6) if i not in set(got.tolist()))
                arrays = {"psi": Arrays({"positions": got})}
                m = Message(m.metadata, content=Content(arrays=arrays, configs=m.content.configs))
            changed.append(m)
        yield from super().send_and_receive(changed, timeout=timeout)


def test_a_relay_that_alters_the_result_is_caught_with_a_shared_secret() -> None:
    sets = {"hospital": [f"p{i}" for i in range(30)], "lab": [f"p{i}" for i in range(20, 50)]}
    with pytest.raises(NodeError, match="tags do not match"):
        simulate_psi(sets, grid_wrapper=TamperingGrid, node_config=lambda i, n: {NODE_SECRET: "k"})
    # without one the peer cannot tell (docs/vertical.md): it keeps a row the hub does not have
    run = simulate_psi(sets, grid_wrapper=TamperingGrid)
    assert run.ids["hospital"] == sorted(f"p{i}" for i in range(20, 30))
    assert run.ids["lab"] != run.ids["hospital"] and len(run.ids["lab"]) == 10
