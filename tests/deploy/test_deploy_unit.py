"""fedlab.deploy's decisions, without starting anything."""

from __future__ import annotations

import pytest

from fedlab import deploy
from fedlab.config import parse_config
from fedlab.errors import ConfigError, KitError


def test_listen_plan():
    loop = deploy.plan_listen("127.0.0.1:9300", ["127.0.0.1", "localhost"], None)
    assert (loop.bind, loop.connect) == ("127.0.0.1:9300", "127.0.0.1:9300")
    wide = deploy.plan_listen("fl.example.org:9092", ["fl.example.org", "localhost", "127.0.0.1"],
                              None)
    assert (wide.bind, wide.connect) == ("0.0.0.0:9092", "127.0.0.1:9092")
    # an old certificate without loopback: bind the address itself
    own = deploy.plan_listen("10.0.0.5:9092", ["10.0.0.5"], None)
    assert (own.bind, own.connect) == ("10.0.0.5:9092", "10.0.0.5:9092")
    with pytest.raises(KitError, match="does not name"):
        deploy.plan_listen("10.0.0.5:9092", ["10.0.0.5"], "0.0.0.0:9092")
    with pytest.raises(ConfigError, match="host:port"):
        deploy.plan_listen("10.0.0.5:9092", ["10.0.0.5"], "nonsense")


def test_provision_adds_loopback_to_the_certificate():
    assert deploy.provision_hosts(["fl.example.org"]) == ["fl.example.org", "localhost",
                                                          "127.0.0.1"]
    assert deploy.provision_hosts(["127.0.0.1"]) == ["127.0.0.1", "localhost"]


@pytest.mark.parametrize("log,cls,words", [
    ("Failed to initialize the connection to the SuperLink.\n[code: 2004] Failed to activate "
     "SuperNode.", deploy.NodeRefused, "not registered at the server"),
    ("[code: 2001] SuperNode authentication is enabled. All SuperNodes must be registered via "
     "the CLI.", deploy.NodeRefused, "not registered at the server"),
    ("ERROR: SSL/TLS handshake error detected.\n[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
     "verify failed", deploy.NodeRefused, "does not trust"),
])
def test_supernode_exits_that_must_not_be_retried(log, cls, words):
    err = deploy._classify_node_exit(log, "10.0.0.5:9092")
    assert isinstance(err, cls) and words in str(err)


def test_supernode_exits_that_are_retried():
    assert deploy._classify_node_exit("Connection attempt failed, retrying", "h:1") is None
    assert deploy._classify_node_exit("SuperNode terminated gracefully.", "h:1") is None


def test_demo_config_is_a_deployment_of_the_builtin_federation():
    text = deploy.demo_config("127.0.0.1:9555", rounds=3, secure=False, stage_timeout=40)
    cfg = parse_config(text)
    assert cfg.rounds == 3 and not cfg.secure and cfg.stage_timeout == 40
    assert cfg.server.address == "127.0.0.1:9555"
    assert [lab.data for lab in cfg.labs] == ["", "", "", ""]  # each lab brings its file
    assert cfg.data.dataset == "heart-disease"


def test_flwr_json_answers():
    out = deploy._parse_flwr_json('Using SuperLink\n{"success": true, "node-id": 7}', "", ["x"])
    assert out == {"success": True, "node-id": 7}
    with pytest.raises(deploy.RunError, match="gave no answer"):
        deploy._parse_flwr_json("Traceback ...", "boom", ["supernode", "register"])


def test_log_tail_returns_complete_lines(tmp_path):
    path = tmp_path / "x.log"
    tail = deploy.LogTail(path)
    assert tail.lines() == []
    path.write_text("one\ntw")
    assert tail.lines() == ["one"]
    with open(path, "a") as f:
        f.write("o\nthree\n")
    assert tail.lines() == ["two", "three"]
