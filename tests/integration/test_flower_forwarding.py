"""The Flower bridge's HTTP forwarding: local server -> local client -> SuperLink.

The bus is replaced by a direct call (``forward = lgc.handle``), so these
tests pin down the two HTTP edges: that a real SuperNode registers and
heartbeats through them, that bytes, statuses and headers pass unchanged, and
that failures become statuses the SuperNode retries instead of ones that stop
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from cellnet.bridge.flower.lgc import SuperLinkClient
from cellnet.bridge.flower.lgs import HEARTBEAT_PATH, LocalServer
from cellnet.bridge.flower.wire import BridgeWireError, HttpCall, HttpReply
from cellnet.errors import (
    CellClosed,
    LinkLost,
    RemoteError,
    RequestTimeout,
    TransportError,
    Unreachable,
)

BIN = Path(sys.executable).parent
MiB = 1024 * 1024


# -- helpers --------------------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago; callers retry if it got taken."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


async def poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``check()`` is true, failing with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Processes:
    """Flower processes started by a test, each in its own process group."""

    tmp: Path
    started: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        home = self.tmp / name
        home.mkdir(parents=True, exist_ok=True)
        log_path = self.tmp / f"{name}.log"
        env = dict(
            os.environ,
            FLWR_HOME=str(home),
            # Flower finds flower-superexec on PATH.
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                env=env,
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((proc, log_path))
        return proc, log_path

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left.

        The SuperLink starts its superexec in a session of its own, out of
        reach of the group signal; such children are found up front and, if
        they do not follow their parent out, killed by pid.
        """
        family = _descendants(proc.pid)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        deadline = time.monotonic() + 10
        while (
            alive := [p for p in family.items() if _running(*p)]
        ) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid, _ in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for proc, _ in reversed(self.started):
            self.stop(proc)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process from /proc, if it exists."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root`` as {pid: start time} (empty off Linux)."""
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := _stat(int(entry))) is not None:
                parents.setdefault(stat[1], []).append(int(entry))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if (stat := _stat(child)) is not None and child not in found:
                found[child] = stat[2]
                todo.append(child)
    return found


def _running(pid: int, started: int) -> bool:
    """Whether ``pid`` is still the process we saw (not reused, not a zombie)."""
    stat = _stat(pid)
    return stat is not None and stat[2] == started and stat[0] != "Z"


def tail(log_path: Path, n: int = 3000) -> str:
    return log_path.read_text(errors="replace")[-n:]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    if not (BIN / "flower-superlink").exists() or not (BIN / "flower-supernode").exists():
        pytest.skip("flwr is not installed next to this interpreter")
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


async def start_superlink(procs: Processes) -> int:
    """Start a SuperLink on a free port; retry if the port was taken meanwhile."""
    for attempt in range(3):
        port = free_port()
        proc, log_path = procs.start(
            f"superlink-{attempt}",
            [
                "flower-superlink",
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
        )
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if port_open(port):
                return port
            await asyncio.sleep(0.05)
        procs.stop(proc)
        last_log = tail(log_path)
    pytest.fail(f"SuperLink did not start:\n{last_log}")


@dataclass
class Recorded:
    call: HttpCall
    budget: float
    reply: HttpReply


@contextlib.asynccontextmanager
async def bridge(
    superlink: str, **lgs_options: float
) -> AsyncIterator[tuple[LocalServer, SuperLinkClient, list[Recorded]]]:
    """An LGS whose forwarder calls an LGC in-process, recording every call."""
    lgc = SuperLinkClient(superlink)
    recorded: list[Recorded] = []

    async def forward(call: HttpCall, budget: float) -> HttpReply:
        reply = await lgc.handle(call)
        recorded.append(Recorded(call, budget, reply))
        return reply

    lgs = LocalServer(forward, "127.0.0.1", 0, **lgs_options)  # type: ignore[arg-type]
    await lgs.start()
    try:
        yield lgs, lgc, recorded
    finally:
        await lgs.aclose()
        await lgc.aclose()


@contextlib.asynccontextmanager
async def http_app(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port; yields ``host:port``."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"{host}:{port}"
    finally:
        await runner.cleanup()


def echo_app() -> web.Application:
    """Echoes the body, reports the request it saw in ``X-Seen-*`` headers."""

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen_headers = [[k.decode(), v.decode()] for k, v in request.raw_headers]
        headers = [
            ("X-Seen-Method", request.method),
            ("X-Seen-Target", request.rel_url.raw_path_qs),
            ("X-Seen-Headers", json.dumps(seen_headers)),
            ("Content-Type", "application/protobuf"),
            ("flwr-version-incompatibility-message", "none"),
            ("Set-Cookie", "a=b"),
        ]
        status = int(request.headers.get("X-Want-Status", "200"))
        if request.headers.get("X-Want-Gzip"):
            headers.append(("Content-Encoding", "gzip"))
            body = gzip.compress(body, mtime=0)
        return web.Response(status=status, headers=headers, body=body)

    app = web.Application(client_max_size=128 * MiB)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def lgs_post(
    lgs: LocalServer,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    host, port = lgs.address
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(
            f"http://{host}:{port}{path}",
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response,
    ):
        return response.status, dict(response.headers), await response.read()


def failing_forward(exc: BaseException) -> Callable[[HttpCall, float], Awaitable[HttpReply]]:
    async def forward(call: HttpCall, budget: float) -> HttpReply:
        raise exc

    return forward


# -- a real SuperNode through the bridge ------------------------------------------


async def test_supernode_registers_and_heartbeats_through_bridge(processes: Processes) -> None:
    superlink_port = await start_superlink(processes)
    async with bridge(f"127.0.0.1:{superlink_port}") as (lgs, _lgc, recorded):
        _host, lgs_port = lgs.address
        supernode, log_path = processes.start(
            "supernode",
            [
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{lgs_port}",
                "--port",
                str(free_port()),
            ],
        )

        def paths() -> set[str]:
            if supernode.poll() is not None:
                pytest.fail(f"SuperNode exited with {supernode.returncode}:\n{tail(log_path)}")
            return {r.call.path for r in recorded}

        wanted = {
            "/v1/fleet/register-node",
            "/v1/fleet/activate-node",
            "/v1/fleet/send-node-heartbeat",
            "/v1/fleet/pull-messages",
        }
        await poll(lambda: wanted <= paths(), 60, f"calls to {sorted(wanted)}")

        # One more idle pull after those shows the node keeps polling.
        def pulls() -> int:
            paths()  # fails the test if the SuperNode died
            return sum(r.call.path == "/v1/fleet/pull-messages" for r in recorded)

        seen = pulls()
        await poll(lambda: pulls() > seen, 15, "the next pull-messages")

        assert supernode.poll() is None, tail(log_path)
        for r in recorded:
            assert r.call.method == "POST"
            assert r.reply.status == 200, (r.call.path, r.reply.status, r.reply.body[:300])
            names = {name.lower() for name, _ in r.call.headers}
            assert {"flwr-public-key", "flwr-timestamp", "flwr-signature"} <= names
            assert "host" not in names and "connection" not in names
            expected = 4.0 if r.call.path == HEARTBEAT_PATH else 25.0
            assert r.budget == pytest.approx(expected, abs=0.5)

        # A graceful stop still goes through the bridge (so the loop must keep
        # serving while the SuperNode shuts down).
        os.killpg(supernode.pid, signal.SIGTERM)
        await poll(lambda: supernode.poll() is not None, 20, "the SuperNode to stop")
        assert {r.call.path for r in recorded} >= {"/v1/fleet/deactivate-node"}, tail(log_path)


# -- error mapping in the local server -----------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "cause"),
    [
        (RequestTimeout("no reply"), 504, "bridge-timeout"),
        (Unreachable("server left"), 503, "Unreachable"),
        (LinkLost("link died"), 503, "LinkLost"),
        (TransportError("refused"), 503, "TransportError"),
        (CellClosed("closed"), 503, "CellClosed"),
        (RemoteError("handler raised"), 503, "RemoteError"),
        (BridgeWireError("bad bytes"), 503, "BridgeWireError"),
        (RuntimeError("bug"), 503, "RuntimeError"),
    ],
)
async def test_forward_errors_become_retryable_statuses(
    exc: BaseException, status: int, cause: str
) -> None:
    async with LocalServer(failing_forward(exc), "127.0.0.1", 0) as lgs:
        got, headers, body = await lgs_post(lgs, "/v1/fleet/pull-messages", b"x")
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert cause in body.decode()
    json.loads(body)


@pytest.mark.parametrize(
    "reply",
    [
        HttpReply(100, (), b""),
        HttpReply(1000, (), b""),
        HttpReply(200, (("X-A", "a\r\nInjected: 1"),), b""),
        HttpReply(200, (("bad name", "v"),), b""),
        None,
    ],
)
async def test_unwritable_replies_become_502(reply: HttpReply | None) -> None:
    async def forward(call: HttpCall, budget: float) -> HttpReply:
        return reply  # type: ignore[return-value]

    async with LocalServer(forward, "127.0.0.1", 0) as lgs:
        status, headers, body = await lgs_post(lgs, "/v1/fleet/pull-messages")
    assert status == 502
    assert "Injected" not in headers
    assert json.loads(body)["error"] == "bridge-bad-reply"


async def test_call_is_never_held_past_its_budget() -> None:
    budgets: list[float] = []

    async def hang(call: HttpCall, budget: float) -> HttpReply:
        budgets.append(budget)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with LocalServer(hang, "127.0.0.1", 0, call_budget=0.6, heartbeat_budget=0.3) as lgs:
        started = time.monotonic()
        status, _, _ = await lgs_post(lgs, "/v1/fleet/pull-messages")
        call_took = time.monotonic() - started
        started = time.monotonic()
        hb_status, _, _ = await lgs_post(lgs, HEARTBEAT_PATH)
        hb_took = time.monotonic() - started
    assert (status, hb_status) == (504, 504)
    assert 0.5 < call_took < 2.0
    assert 0.2 < hb_took < 1.5
    assert budgets[0] == pytest.approx(0.6, abs=0.1)
    assert budgets[1] == pytest.approx(0.3, abs=0.1)


async def test_body_over_max_body_is_413() -> None:
    forwarded: list[HttpCall] = []

    async def forward(call: HttpCall, budget: float) -> HttpReply:
        forwarded.append(call)
        return HttpReply(200, (), b"")

    async with LocalServer(forward, "127.0.0.1", 0, max_body=1 * MiB) as lgs:
        status, _, body = await lgs_post(lgs, "/v1/fleet/push-object", b"x" * (MiB + 1))
        ok_status, _, _ = await lgs_post(lgs, "/v1/fleet/push-object", b"x" * MiB)
    assert status == 413
    assert "exceeds the bridge limit" in json.loads(body)["detail"]
    assert ok_status == 200
    assert [len(c.body) for c in forwarded] == [MiB]


async def test_chunked_body_over_max_body_is_413() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * (MiB // 2)

    async with LocalServer(failing_forward(AssertionError()), "127.0.0.1", 0, max_body=MiB) as lgs:
        host, port = lgs.address
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://{host}:{port}/v1/fleet/push-object", data=chunks()) as resp,
        ):
            assert resp.status == 413


async def test_local_server_start_and_close() -> None:
    lgs = LocalServer(failing_forward(AssertionError()), "127.0.0.1", 0)
    host, port = await lgs.start()
    assert host == "127.0.0.1" and port > 0
    assert await lgs.start() == (host, port)
    await lgs.aclose()
    await lgs.aclose()
    assert not port_open(port)
    with pytest.raises(RuntimeError):
        await lgs.start()


async def test_many_concurrent_connections() -> None:
    async def forward(call: HttpCall, budget: float) -> HttpReply:
        await asyncio.sleep(0.05)
        return HttpReply(200, (("Content-Type", "text/plain"),), call.body)

    async with LocalServer(forward, "127.0.0.1", 0) as lgs:
        host, port = lgs.address
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(i: int) -> bytes:
                url = f"http://{host}:{port}/v1/fleet/pull-object"
                async with session.post(url, data=str(i).encode()) as resp:
                    assert resp.status == 200
                    return await resp.read()

            bodies = await asyncio.gather(*(one(i) for i in range(200)))
    assert bodies == [str(i).encode() for i in range(200)]


# -- the local client ------------------------------------------------------------------


async def test_superlink_client_against_closed_port_gives_503() -> None:
    async with SuperLinkClient(f"127.0.0.1:{free_port()}") as lgc:
        call = HttpCall("POST", "/v1/fleet/pull-messages", "", (), b"x")
        reply = await lgc.handle(call)
    assert reply.status == 503
    assert json.loads(reply.body)["error"] == "superlink-unreachable"


async def test_superlink_client_timeout_gives_504() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_post("/slow", slow)
    async with http_app(app) as address, SuperLinkClient(address, timeout=0.3) as lgc:
        started = time.monotonic()
        reply = await lgc.handle(HttpCall("POST", "/slow", "", (), b""))
        assert time.monotonic() - started < 2
    assert reply.status == 504


async def test_superlink_client_closed_answers_503() -> None:
    lgc = SuperLinkClient("127.0.0.1:1")
    await lgc.aclose()
    await lgc.aclose()
    reply = await lgc.handle(HttpCall("POST", "/x", "", (), b""))
    assert reply.status == 503


async def test_superlink_client_passes_statuses_headers_and_bytes() -> None:
    async with http_app(echo_app()) as address, SuperLinkClient(address) as lgc:
        call = HttpCall(
            "POST",
            "/v1/fleet/get-run",
            "a=1&b=%2F",
            (
                ("Host", "elsewhere:1"),
                ("Connection", "keep-alive"),
                ("flwr-Signature", "sig=="),
                ("X-Want-Status", "401"),
            ),
            b"\x00\x01",
        )
        reply = await lgc.handle(call)
        assert reply.status == 401
        headers = dict(reply.headers)
        assert reply.body == b"\x00\x01"
        assert headers["X-Seen-Target"] == "/v1/fleet/get-run?a=1&b=%2F"
        seen = json.loads(headers["X-Seen-Headers"])
        assert ["flwr-Signature", "sig=="] in seen
        assert ["Host", address] in seen  # recomputed, not the caller's
        assert not any(name.lower() in {"user-agent", "accept-encoding"} for name, _ in seen)
        assert headers["flwr-version-incompatibility-message"] == "none"
        # The bridge keeps no cookies between SuperNodes.
        again = await lgc.handle(call)
        seen = json.loads(dict(again.headers)["X-Seen-Headers"])
        assert not any(name.lower() == "cookie" for name, _ in seen)


async def test_superlink_client_handle_bytes() -> None:
    async with http_app(echo_app()) as address, SuperLinkClient(address) as lgc:
        data = HttpCall("PUT", "/p", "", (), b"payload").encode()
        reply = HttpReply.decode(await lgc.handle_bytes(data))
        assert (reply.status, reply.body) == (200, b"payload")
        with pytest.raises(BridgeWireError):
            await lgc.handle_bytes(b"\xc1garbage")


async def test_superlink_client_refuses_oversized_response() -> None:
    async with (
        http_app(echo_app()) as address,
        SuperLinkClient(address, max_body=2 * MiB) as lgc,
    ):
        big = HttpCall("POST", "/x", "", (), b"y" * (2 * MiB))
        assert (await lgc.handle(big)).status == 200
        too_big = HttpCall("POST", "/x", "", (), b"y" * (2 * MiB + 1))
        assert (await lgc.handle(too_big)).status == 413


# -- both edges together ------------------------------------------------------------------


async def test_six_mebibyte_body_passes_unchanged() -> None:
    body = os.urandom(6 * MiB)
    async with http_app(echo_app()) as address, bridge(address) as (lgs, _, recorded):
        status, headers, echoed = await lgs_post(
            lgs,
            "/v1/fleet/push-object?x=%20y",
            body,
            headers={"flwr-public-key": "K", "Flwr-Timestamp": "T"},
        )
    assert status == 200
    assert echoed == body
    assert headers["X-Seen-Target"] == "/v1/fleet/push-object?x=%20y"
    seen = json.loads(headers["X-Seen-Headers"])
    assert ["flwr-public-key", "K"] in seen and ["Flwr-Timestamp", "T"] in seen
    assert recorded[0].call.body == body


async def test_compressed_reply_is_not_decoded_on_the_way() -> None:
    body = b"abc" * 1000
    async with http_app(echo_app()) as address, bridge(address) as (lgs, _, _):
        status, headers, raw = await lgs_post(lgs, "/x", body, headers={"X-Want-Gzip": "1"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert raw == gzip.compress(body, mtime=0)


async def test_superlink_error_statuses_reach_the_supernode() -> None:
    async with http_app(echo_app()) as address, bridge(address) as (lgs, _, _):
        for wanted in (400, 401, 404, 500):
            status, _, _ = await lgs_post(lgs, "/x", b"", headers={"X-Want-Status": str(wanted)})
            assert status == wanted


# -- a whole Flower run through the bridge -------------------------------------------------

TINY_APP = {
    "pyproject.toml": """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "bridgeprobe"
version = "1.0.0"
dependencies = ["flwr>=1.42", "numpy"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "cellnet"

[tool.flwr.app.components]
serverapp = "bridgeprobe.server_app:app"
clientapp = "bridgeprobe.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 2
""",
    "bridgeprobe/__init__.py": "",
    # 12 MB of weights: more than two 5 MiB objects each way, every round.
    "bridgeprobe/server_app.py": """\
import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    arrays = ArrayRecord([np.zeros(3_000_000, dtype=np.float32)])
    strategy = FedAvg(min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1)
    result = strategy.start(
        grid=grid, initial_arrays=arrays, num_rounds=int(context.run_config["num-server-rounds"])
    )
    print("PROBE-SUM", float(result.arrays.to_numpy_ndarrays()[0].sum()))
""",
    "bridgeprobe/client_app.py": """\
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = [a + 1.0 for a in msg.content["arrays"].to_numpy_ndarrays()]
    metrics = MetricRecord({"num-examples": 1})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({"num-examples": 1, "loss": 0.5})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
""",
}


@pytest.mark.e2e
async def test_flower_run_with_large_objects_through_bridge(
    processes: Processes, tmp_path: Path
) -> None:
    superlink_port = await start_superlink(processes)
    app_dir = tmp_path / "app"
    for name, text in TINY_APP.items():
        (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / name).write_text(text)
    cli_home = tmp_path / "cli"
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "probe"\n\n[superlink.probe]\n'
        f'address = "127.0.0.1:{superlink_port}"\ninsecure = true\n'
    )

    async with bridge(f"127.0.0.1:{superlink_port}") as (lgs, _lgc, recorded):
        supernode, log_path = processes.start(
            "supernode",
            [
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{lgs.address[1]}",
                "--port",
                str(free_port()),
            ],
        )
        await poll(
            lambda: any(r.call.path == "/v1/fleet/activate-node" for r in recorded),
            60,
            "the SuperNode to activate",
        )
        run = await asyncio.create_subprocess_exec(
            str(BIN / "flwr"),
            "run",
            str(app_dir),
            "probe",
            "--stream",
            env=dict(
                os.environ,
                FLWR_HOME=str(cli_home),
                PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = await asyncio.wait_for(run.communicate(), 240)
        finally:
            if run.returncode is None:
                os.killpg(run.pid, signal.SIGKILL)
                await run.wait()
        text = output.decode(errors="replace")
        assert run.returncode == 0, text[-3000:]
        # Two rounds of +1 on three million zeros, through 5 MiB objects.
        assert "PROBE-SUM 6000000.0" in text, text[-3000:]
        assert supernode.poll() is None, tail(log_path)

    statuses = {(r.call.path, r.reply.status) for r in recorded}
    assert {status for _, status in statuses} == {200}, statuses
    paths = {path for path, _ in statuses}
    assert {
        "/v1/fleet/get-run",
        "/v1/fleet/get-fab",
        "/v1/fleet/pull-object",
        "/v1/fleet/push-object",
        "/v1/fleet/push-messages",
        "/v1/fleet/confirm-message-received",
    } <= paths
    assert max(len(r.call.body) for r in recorded) > 5 * MiB
    assert max(len(r.reply.body) for r in recorded) > 5 * MiB
