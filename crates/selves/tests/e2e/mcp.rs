//! `selves mcp`, driven by the official MCP Python SDK's stdio client
//! (`tests/mcp/client.py`), and `selves mcp install`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{Node, star};

/// A Python that has the `mcp` SDK: `SELVES_MCP_PYTHON`, or the venv
/// `.ci/run` makes in the target folder. Outside CI a machine without one
/// skips (visibly); in CI that fails.
fn mcp_python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SELVES_MCP_PYTHON").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/mcp-venv/bin/python")),
    ];
    for p in candidates.into_iter().flatten() {
        let ok = Command::new(&p)
            .args(["-c", "import mcp"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(p);
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no Python with the mcp SDK: run .ci/run, or set SELVES_MCP_PYTHON"
    );
    eprintln!("skipping: no Python with the mcp SDK (see .ci/run)");
    None
}

/// Calls the tools through the SDK's client; returns its report.
fn mcp(python: &PathBuf, node: &Node, calls: Value) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_selves"))
        .arg(calls.to_string())
        .env_clear()
        .env("SELVES_HOME", node.home())
        .env("HOME", node.dir.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the MCP client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn text(report: &Value, i: usize) -> &str {
    report["calls"][i]["text"].as_str().unwrap()
}

/// What was said on the laptop is found by an agent on the hub: search
/// (with its filters), recent, a conversation, remember, nodes.
#[test]
fn an_agent_reads_and_writes_memory_through_mcp() {
    let Some(python) = mcp_python() else { return };
    let (hub, server, spokes) = star("hub", &["laptop"]);
    let laptop = &spokes[0];
    laptop.import(&[
        json!({"source": "claude-code", "conversation_id": "claude-code-s1", "msg_id": "m1",
               "role": "user", "text": "why does the tokenizer drop the last line", "ts": 1796036400,
               "conversation": {"title": "tokenizer bug", "project_path": "/home/ana/parser"}}),
        json!({"source": "claude-code", "conversation_id": "claude-code-s1", "msg_id": "m2",
               "role": "assistant", "text": "It stops at EOF without a trailing newline", "ts": 1796036460}),
    ]);
    laptop.ok(&["sync"]);

    let r = mcp(
        &python,
        &hub,
        json!([
            ["search", {"query": "tokenizer"}],
            ["search", {"query": "tokenizer", "origin": "hub"}],
            ["search", {"query": "tokenizer", "since": "2099-01-01"}],
            ["search", {"query": "tokenizer", "since": "nonsense"}],
            ["recent", {"limit": 1}],
            ["conversation", {"id": "claude-code-s1"}],
            ["conversation", {"id": "no-such"}],
            ["remember", {"text": "the octarine deadline moved to Friday", "title": "deadlines"}],
            ["remember", {"text": "key -----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaA"}],
            ["nodes", {}],
        ]),
    );
    assert_eq!(r["server"], "selves");
    assert_eq!(
        r["tools"],
        json!(["conversation", "nodes", "recent", "remember", "search"])
    );
    assert!(text(&r, 0).contains("1 match"), "{}", text(&r, 0));
    assert!(text(&r, 0).contains("@laptop"), "{}", text(&r, 0));
    assert!(text(&r, 0).contains("claude-code-s1"), "{}", text(&r, 0));
    assert!(
        text(&r, 1).starts_with("no messages match"),
        "{}",
        text(&r, 1)
    );
    assert!(
        text(&r, 2).starts_with("no messages match"),
        "{}",
        text(&r, 2)
    );
    assert_eq!(r["calls"][3]["error"], true);
    assert!(text(&r, 4).contains("trailing newline"), "{}", text(&r, 4));
    let conv = text(&r, 5);
    assert!(
        conv.contains("tokenizer bug") && conv.contains("/home/ana/parser"),
        "{conv}"
    );
    assert!(
        conv.find("drop the last line").unwrap() < conv.find("trailing newline").unwrap(),
        "{conv}"
    );
    assert_eq!(r["calls"][6]["error"], true);
    assert!(
        text(&r, 7).starts_with("remembered selves/notes/"),
        "{}",
        text(&r, 7)
    );
    assert_eq!(r["calls"][8]["error"], true);
    assert!(text(&r, 8).contains("private key"), "{}", text(&r, 8));
    let nodes = text(&r, 9);
    assert!(nodes.contains("this node: hub"), "{nodes}");
    assert!(nodes.contains("- laptop"), "{nodes}");

    // What the agent remembered is memory like any other: found by the
    // CLI, synced to the laptop; the secret was not written.
    assert!(hub.ok(&["search", "octarine"]).contains("Friday"));
    laptop.ok(&["sync"]);
    assert!(laptop.ok(&["search", "octarine"]).contains("Friday"));
    assert!(!hub.ok(&["export"]).contains("OPENSSH"));

    // A peer gone quiet reaches the agent as the status line says it.
    drop(server);
    laptop.ok(&["peer", "set", "hub", "--down-after", "1s"]);
    laptop.run(&["sync"]);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let r = mcp(&python, laptop, json!([["nodes", {}]]));
    let nodes = text(&r, 0);
    assert!(nodes.contains("sync down"), "{nodes}");
    assert!(nodes.contains("⚠ sync to hub down"), "{nodes}");
}

/// `mcp install` adds selves to each client's config, keeps everything
/// else there, and changes nothing when run again; `--print` writes
/// nothing.
#[test]
fn mcp_install_writes_each_clients_config_once() {
    let node = Node::new("laptop");
    let home = node.dir.path();
    std::fs::write(
        home.join(".claude.json"),
        r#"{"numStartups": 7, "mcpServers": {"other": {"command": "other-server"}}}"#,
    )
    .unwrap();
    let out = node.ok(&["mcp", "install", "claude-code"]);
    assert!(out.contains("installed"), "{out}");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join(".claude.json")).unwrap()).unwrap();
    assert_eq!(doc["numStartups"], 7);
    assert_eq!(doc["mcpServers"]["other"]["command"], "other-server");
    let entry = &doc["mcpServers"]["selves"];
    assert_eq!(entry["args"], json!(["mcp"]));
    assert_eq!(entry["type"], "stdio");
    assert_eq!(entry["env"]["SELVES_HOME"], node.home().to_str().unwrap());
    assert!(
        std::path::Path::new(entry["command"].as_str().unwrap()).exists(),
        "{entry}"
    );
    let again = node.ok(&["mcp", "install", "claude-code"]);
    assert!(again.contains("already installed"), "{again}");

    let printed = node.ok(&["mcp", "install", "cursor", "--print"]);
    assert!(printed.contains("\"selves\""), "{printed}");
    assert!(!home.join(".cursor/mcp.json").exists());
    node.ok(&["mcp", "install", "cursor"]);
    let cursor: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join(".cursor/mcp.json")).unwrap())
            .unwrap();
    assert_eq!(cursor["mcpServers"]["selves"]["args"], json!(["mcp"]));

    std::fs::create_dir_all(home.join(".codex")).unwrap();
    let mine = "# my settings\nmodel = \"gpt-5-codex\"\n\n[mcp_servers.other]\ncommand = \"o\"\n";
    std::fs::write(home.join(".codex/config.toml"), mine).unwrap();
    node.ok(&["mcp", "install", "codex"]);
    let toml = std::fs::read_to_string(home.join(".codex/config.toml")).unwrap();
    assert!(toml.starts_with(mine), "{toml}");
    assert!(toml.contains("[mcp_servers.selves]\ncommand = "), "{toml}");
    let again = node.ok(&["mcp", "install", "codex"]);
    assert!(again.contains("already installed"), "{again}");

    // A config that is not what it should be is left alone, loudly.
    std::fs::write(home.join(".cursor/mcp.json"), "{ not json").unwrap();
    let bad = node.fails(&["mcp", "install", "cursor"], 1);
    assert!(bad.stderr.contains("not JSON: left as it is"), "{bad:?}");
    assert_eq!(
        std::fs::read_to_string(home.join(".cursor/mcp.json")).unwrap(),
        "{ not json"
    );
}
