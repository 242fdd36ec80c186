//! `selves service`: the rendered units, and install/uninstall into a
//! temporary config folder. The service manager is replaced by a script
//! that records its calls (`SELVES_SERVICE_MANAGER`), so nothing touches
//! this machine's systemd.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use expect_test::expect;

use crate::harness::{Node, bin};

/// The unit with this machine's paths replaced by placeholders.
fn printed(node: &Node, platform: &str, extra: &[&str]) -> String {
    let mut args = vec!["service", "install", "--print", "--platform", platform];
    args.extend_from_slice(extra);
    let home = std::fs::canonicalize(node.home()).unwrap();
    node.ok(&args)
        .replace(bin(), "/BIN/selves")
        .replace(home.to_str().unwrap(), "/HOME")
}

#[test]
fn the_rendered_units() {
    let node = Node::new("vps");
    expect![[r#"
        # Written by `selves service install`; `selves service uninstall` removes it.
        [Unit]
        Description=selves daemon (/HOME)
        After=network-online.target
        Wants=network-online.target

        [Service]
        Environment=SELVES_HOME=/HOME
        ExecStart=/BIN/selves daemon --listen 0.0.0.0:8765
        Restart=always
        RestartSec=5
        KillSignal=SIGTERM
        TimeoutStopSec=20

        [Install]
        WantedBy=default.target
    "#]]
    .assert_eq(&printed(&node, "systemd", &["--listen", "0.0.0.0:8765"]));
    expect![[r#"
        <?xml version="1.0" encoding="UTF-8"?>
        <!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
        <!-- Written by `selves service install`; `selves service uninstall` removes it. -->
        <plist version="1.0">
        <dict>
          <key>Label</key>
          <string>dev.selves.daemon</string>
          <key>ProgramArguments</key>
          <array>
            <string>/BIN/selves</string>
            <string>daemon</string>
          </array>
          <key>EnvironmentVariables</key>
          <dict>
            <key>SELVES_HOME</key>
            <string>/HOME</string>
          </dict>
          <key>RunAtLoad</key>
          <true/>
          <key>KeepAlive</key>
          <true/>
          <key>ThrottleInterval</key>
          <integer>5</integer>
          <key>StandardErrorPath</key>
          <string>/HOME/logs/launchd.err</string>
        </dict>
        </plist>
    "#]]
    .assert_eq(&printed(&node, "launchd", &[]));
    expect![[r#"
        #!/data/data/com.termux/files/usr/bin/sh
        # Written by `selves service install`; `selves service uninstall` removes it.
        # termux-services (runit) runs this and restarts it when it exits.
        export SELVES_HOME=/HOME
        exec /BIN/selves daemon 2>&1
    "#]]
    .assert_eq(&printed(&node, "termux", &[]));
    let container = printed(&node, "container", &[]);
    assert!(
        container.contains("exec selves daemon --listen 0.0.0.0:8765")
            && container.contains("-v selves-home:/data -e SELVES_HOME=/data"),
        "{container}"
    );
}

/// A stand-in for systemctl that appends its arguments to `calls`.
fn recorder(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("systemctl");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\n",
            dir.join("calls").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn installing_twice_leaves_one_unit_and_uninstall_removes_it() {
    let node = Node::new("laptop");
    let config = node.dir.path().join("xdg");
    let manager = recorder(node.dir.path());
    let run = |args: &[&str]| {
        let out = node
            .command(args)
            .env("XDG_CONFIG_HOME", &config)
            .env("SELVES_SERVICE_MANAGER", &manager)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let units = || {
        std::fs::read_dir(config.join("systemd/user"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let out = run(&["service", "install", "--platform", "systemd"]);
    assert!(out.starts_with("installed "), "{out}");
    let unit = config.join("systemd/user/selves.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("ExecStart="), "{text}");
    let out = run(&["service", "install", "--platform", "systemd"]);
    assert!(out.contains("already installed"), "{out}");
    assert_eq!(units(), 1);
    // A changed command line rewrites the same unit.
    run(&[
        "service",
        "install",
        "--platform",
        "systemd",
        "--listen",
        "127.0.0.1:9999",
    ]);
    assert_eq!(units(), 1);
    assert!(
        std::fs::read_to_string(&unit)
            .unwrap()
            .contains("--listen 127.0.0.1:9999")
    );
    let status = run(&["service", "status", "--platform", "systemd"]);
    assert!(status.contains("installed: "), "{status}");

    let out = run(&["service", "uninstall", "--platform", "systemd"]);
    assert!(out.starts_with("removed "), "{out}");
    assert_eq!(units(), 0);
    let out = run(&["service", "uninstall", "--platform", "systemd"]);
    assert!(out.contains("not installed"), "{out}");
    let status = run(&["service", "status", "--platform", "systemd"]);
    assert!(status.contains("not installed"), "{status}");

    let calls = std::fs::read_to_string(node.dir.path().join("calls")).unwrap();
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [
            "--user daemon-reload",
            "--user enable --now selves.service",
            "--user restart selves.service",
            "--user daemon-reload",
            "--user enable --now selves.service",
            "--user daemon-reload",
            "--user enable --now selves.service",
            "--user restart selves.service",
            "--user disable --now selves.service",
            "--user daemon-reload",
        ]
    );
}

#[test]
fn termux_install_writes_an_executable_run_script_once() {
    let node = Node::new("phone");
    let prefix = node.dir.path().join("usr");
    let run = |args: &[&str]| {
        let out = node.command(args).env("PREFIX", &prefix).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["service", "install", "--platform", "termux"]);
    run(&["service", "install", "--platform", "termux"]);
    let script = prefix.join("var/service/selves/run");
    let mode = std::fs::metadata(&script).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(
        std::fs::read_dir(prefix.join("var/service"))
            .unwrap()
            .count(),
        1
    );
    run(&["service", "uninstall", "--platform", "termux"]);
    assert!(!prefix.join("var/service/selves").exists());
}
