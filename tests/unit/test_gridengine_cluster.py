"""The Grid Engine test cluster's pure parts (clusters/gridengine.py): configuration files it writes."""

from __future__ import annotations

from pathlib import Path

from clusters.gridengine import (
    GLOBAL_CHANGES,
    QUEUE,
    Layout,
    bootstrap,
    edit_settings,
    exec_host_conf,
    hosts_file,
    node_names,
    queue_conf,
)


def settings(text: str) -> dict[str, str]:
    return {line.split(None, 1)[0]: line.split(None, 1)[1] for line in text.splitlines()
            if line.strip() and not line.startswith("#") and len(line.split(None, 1)) == 2}


def test_edit_settings_changes_keys_keeps_the_rest_and_appends_missing_ones() -> None:
    text = "# header\nmin_uid                1000\nmailer /usr/bin/mail\nxterm /usr/bin/xterm\n"
    out = edit_settings(text, {"min_uid": "0", "mailer": "/bin/true", "execd_params": "ENABLE_ADDGRP_KILL=true"})
    assert out.startswith("# header\n")
    assert settings(out) == {"min_uid": "0", "mailer": "/bin/true", "xterm": "/usr/bin/xterm",
                             "execd_params": "ENABLE_ADDGRP_KILL=true"}
    assert settings(edit_settings(text, GLOBAL_CHANGES))["login_shells"] == "none"


def test_queue_gives_each_host_one_slot_and_no_limits() -> None:
    q = settings(queue_conf(node_names(3)))
    assert (q["qname"], q["hostlist"], q["slots"], q["shell"]) == (QUEUE, "g1 g2 g3", "1", "/bin/bash")
    assert q["h_rt"] == q["s_rt"] == q["h_vmem"] == "INFINITY"
    assert settings(exec_host_conf("g2"))["hostname"] == "g2"


def test_hosts_file_and_bootstrap_name_only_this_cluster() -> None:
    hosts = hosts_file("vm", ["10.88.0.1", "192.0.2.2"], {"g1": "10.88.0.11", "g2": "10.88.0.12"})
    assert hosts.splitlines() == ["127.0.0.1 localhost", "10.88.0.1 vm", "192.0.2.2 vm", "10.88.0.11 g1",
                                  "10.88.0.12 g2"]
    lay = Layout(Path("/tmp/ge-x"), "htexg")
    boot = settings(bootstrap(lay))
    assert boot["spooling_params"] == "/tmp/ge-x/spooldb" and boot["qmaster_spool_dir"] == "/tmp/ge-x/spool/qmaster"
    assert lay.env(16444) == {"SGE_ROOT": "/tmp/ge-x/root", "SGE_CELL": "htex", "SGE_QMASTER_PORT": "16444",
                              "SGE_EXECD_PORT": "16445"}
    assert (lay.netns("g1"), lay.veth("g1"), lay.bridge) == ("htexg-g1", "htexg-g1h", "htexg-br")
