//! `service install|uninstall|status`: `selves daemon` as a service that
//! starts at boot (or login) and is restarted when it dies: a systemd user
//! unit on Linux, a LaunchAgent on macOS, a termux-services run script on
//! Termux. In a container the container's command is the service: install
//! prints the line to use instead.
//!
//! Install is idempotent: the unit has one fixed path per home, so
//! installing again rewrites it in place (or changes nothing when it is the
//! same), never a second unit.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};

use crate::home::Home;

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Install and start the daemon as a service (again: updates it in place)
    Install(InstallArgs),
    /// Stop the service and remove it
    Uninstall(PlatformArg),
    /// Whether the service is installed and the daemon running
    Status(PlatformArg),
}

#[derive(Args)]
pub struct InstallArgs {
    #[command(flatten)]
    platform: PlatformArg,
    /// Print the unit instead of installing it
    #[arg(long)]
    print: bool,
    /// The daemon serves on this address (a hub) [default: server.listen
    /// in config.toml, else it only dials]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

#[derive(Args)]
pub struct PlatformArg {
    /// The service manager [default: this machine's]
    #[arg(long, value_enum)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Platform {
    /// A systemd user unit (Linux)
    Systemd,
    /// A LaunchAgent (macOS)
    Launchd,
    /// A termux-services run script (Android)
    Termux,
    /// A container: the daemon is the container's command
    Container,
}

impl Platform {
    fn detect() -> Platform {
        if std::env::var_os("TERMUX_VERSION").is_some()
            || std::env::var("PREFIX").is_ok_and(|p| p.contains("com.termux"))
        {
            Platform::Termux
        } else if cfg!(target_os = "macos") {
            Platform::Launchd
        } else if Path::new("/.dockerenv").exists() || Path::new("/run/.containerenv").exists() {
            Platform::Container
        } else {
            Platform::Systemd
        }
    }
}

/// What the service runs.
struct Unit {
    exe: PathBuf,
    home: PathBuf,
    listen: Option<String>,
}

impl Unit {
    fn args(&self) -> Vec<String> {
        let mut args = vec!["daemon".to_owned()];
        if let Some(l) = &self.listen {
            args.extend(["--listen".to_owned(), l.clone()]);
        }
        args
    }

    fn command_line(&self) -> String {
        std::iter::once(shell_quote(&self.exe.to_string_lossy()))
            .chain(self.args().iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Quotes for sh (and systemd's ExecStart, which accepts the same quoting
/// for these characters).
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@+,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn render(platform: Platform, unit: &Unit) -> String {
    let home = unit.home.to_string_lossy();
    match platform {
        Platform::Systemd => format!(
            "# Written by `selves service install`; `selves service uninstall` removes it.\n\
             [Unit]\n\
             Description=selves daemon ({home})\n\
             After=network-online.target\n\
             Wants=network-online.target\n\
             \n\
             [Service]\n\
             Environment=SELVES_HOME={}\n\
             ExecStart={}\n\
             Restart=always\n\
             RestartSec=5\n\
             KillSignal=SIGTERM\n\
             TimeoutStopSec=20\n\
             \n\
             [Install]\n\
             WantedBy=default.target\n",
            shell_quote(&home),
            unit.command_line()
        ),
        Platform::Launchd => {
            let args: String = std::iter::once(unit.exe.to_string_lossy().into_owned())
                .chain(unit.args())
                .map(|a| format!("    <string>{}</string>\n", xml_escape(&a)))
                .collect();
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                 <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
                 <!-- Written by `selves service install`; `selves service uninstall` removes it. -->\n\
                 <plist version=\"1.0\">\n<dict>\n\
                 \x20 <key>Label</key>\n  <string>{}</string>\n\
                 \x20 <key>ProgramArguments</key>\n  <array>\n{args}  </array>\n\
                 \x20 <key>EnvironmentVariables</key>\n  <dict>\n    <key>SELVES_HOME</key>\n    <string>{}</string>\n  </dict>\n\
                 \x20 <key>RunAtLoad</key>\n  <true/>\n\
                 \x20 <key>KeepAlive</key>\n  <true/>\n\
                 \x20 <key>ThrottleInterval</key>\n  <integer>5</integer>\n\
                 \x20 <key>StandardErrorPath</key>\n  <string>{}</string>\n\
                 </dict>\n</plist>\n",
                LAUNCHD_LABEL,
                xml_escape(&home),
                xml_escape(&unit.home.join("logs/launchd.err").to_string_lossy()),
            )
        }
        Platform::Termux => format!(
            "#!/data/data/com.termux/files/usr/bin/sh\n\
             # Written by `selves service install`; `selves service uninstall` removes it.\n\
             # termux-services (runit) runs this and restarts it when it exits.\n\
             export SELVES_HOME={}\n\
             exec {} 2>&1\n",
            shell_quote(&home),
            unit.command_line()
        ),
        Platform::Container => CONTAINER.to_owned(),
    }
}

const CONTAINER: &str = "# In a container the daemon is the container's command, with the home on a volume:\n\
             docker run -d --restart unless-stopped -v selves-home:/data -e SELVES_HOME=/data \\\n\
             \x20 -p 8765:8765 IMAGE \\\n\
             \x20 sh -c 'selves init --name NAME; exec selves daemon --listen 0.0.0.0:8765'\n\
             # (Compose: `restart: unless-stopped`, the same volume and command.)\n\
             # Never let two containers share one home: two nodes with one id clash.\n";

const LAUNCHD_LABEL: &str = "dev.selves.daemon";
const SYSTEMD_UNIT: &str = "selves.service";

/// Where the unit goes. One path per platform (and per home under
/// termux, whose service names are folders): a re-install replaces it.
fn unit_path(platform: Platform) -> anyhow::Result<PathBuf> {
    let home_dir = || {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .context("HOME is not set")
    };
    Ok(match platform {
        Platform::Systemd => std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .map_or_else(|| home_dir().map(|h| h.join(".config")), Ok)?
            .join("systemd/user")
            .join(SYSTEMD_UNIT),
        Platform::Launchd => home_dir()?
            .join("Library/LaunchAgents")
            .join(format!("{LAUNCHD_LABEL}.plist")),
        Platform::Termux => {
            let prefix = std::env::var_os("PREFIX")
                .map(PathBuf::from)
                .context("PREFIX is not set: is this Termux?")?;
            prefix.join("var/service/selves/run")
        }
        Platform::Container => bail!("in a container, the daemon is the container's command"),
    })
}

/// Runs a service manager command; failures are reported, not fatal (the
/// unit is written either way). `SELVES_SERVICE_MANAGER` replaces the
/// program (tests record the calls instead of touching the machine's
/// service manager).
fn manage(program: &str, args: &[&str]) -> bool {
    let program = std::env::var("SELVES_SERVICE_MANAGER").unwrap_or_else(|_| program.to_owned());
    match Command::new(&program).args(args).status() {
        Ok(s) if s.success() => true,
        Ok(s) => {
            eprintln!("note: `{program} {}` failed ({s})", args.join(" "));
            false
        }
        Err(e) => {
            eprintln!("note: cannot run {program}: {e}");
            false
        }
    }
}

pub fn service(home: Option<PathBuf>, cmd: ServiceCommand) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    match cmd {
        ServiceCommand::Install(a) => install(&home, a),
        ServiceCommand::Uninstall(p) => uninstall(p.platform.unwrap_or_else(Platform::detect)),
        ServiceCommand::Status(p) => status(&home, p.platform.unwrap_or_else(Platform::detect)),
    }
}

fn install(home: &Home, a: InstallArgs) -> anyhow::Result<()> {
    let platform = a.platform.platform.unwrap_or_else(Platform::detect);
    let unit = Unit {
        exe: std::env::current_exe().context("cannot find this program's path")?,
        home: std::fs::canonicalize(&home.dir)?,
        listen: a.listen.or_else(|| home.config.server.listen.clone()),
    };
    let text = render(platform, &unit);
    if a.print || platform == Platform::Container {
        print!("{text}");
        return Ok(());
    }
    let path = unit_path(platform)?;
    let same = std::fs::read_to_string(&path).is_ok_and(|old| old == text);
    if same {
        println!("already installed: {} (unchanged)", path.display());
    } else {
        let dir = path.parent().expect("a unit path has a folder");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mode = if platform == Platform::Termux {
            0o700
        } else {
            0o600
        };
        crate::home::write_atomic(&path, text.as_bytes(), mode)?;
        println!("installed {}", path.display());
    }
    match platform {
        Platform::Systemd => {
            if manage("systemctl", &["--user", "daemon-reload"])
                && manage("systemctl", &["--user", "enable", "--now", SYSTEMD_UNIT])
            {
                if !same {
                    manage("systemctl", &["--user", "restart", SYSTEMD_UNIT]);
                }
                println!("started: systemctl --user status {SYSTEMD_UNIT}");
            }
            println!(
                "to keep it running when you are logged out: sudo loginctl enable-linger {}",
                std::env::var("USER").unwrap_or_else(|_| "$USER".into())
            );
        }
        Platform::Launchd => {
            let p = path.to_string_lossy();
            // Unload first so a changed plist is read again.
            let _ = Command::new("launchctl").args(["unload", &p]).status();
            if manage("launchctl", &["load", "-w", &p]) {
                println!("started: launchctl list {LAUNCHD_LABEL}");
            }
        }
        Platform::Termux => {
            println!(
                "enable it with: sv-enable selves (needs `pkg install termux-services`; start Termux:Boot to run it at boot)"
            );
        }
        Platform::Container => unreachable!("printed above"),
    }
    Ok(())
}

fn uninstall(platform: Platform) -> anyhow::Result<()> {
    let path = unit_path(platform)?;
    if !path.exists() {
        println!(
            "not installed ({} does not exist); nothing changed",
            path.display()
        );
        return Ok(());
    }
    match platform {
        Platform::Systemd => {
            manage("systemctl", &["--user", "disable", "--now", SYSTEMD_UNIT]);
        }
        Platform::Launchd => {
            manage("launchctl", &["unload", "-w", &path.to_string_lossy()]);
        }
        Platform::Termux => {
            let _ = Command::new("sv-disable").arg("selves").status();
        }
        Platform::Container => {}
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    if platform == Platform::Termux
        && let Some(dir) = path.parent()
    {
        let _ = std::fs::remove_dir(dir);
    }
    if platform == Platform::Systemd {
        manage("systemctl", &["--user", "daemon-reload"]);
    }
    println!("removed {}", path.display());
    Ok(())
}

fn status(home: &Home, platform: Platform) -> anyhow::Result<()> {
    if platform == Platform::Container {
        println!(
            "container: the daemon is the container's command (`selves service install --print`)"
        );
    } else {
        let path = unit_path(platform)?;
        if path.exists() {
            println!("installed: {}", path.display());
        } else {
            println!("not installed (`selves service install`)");
        }
    }
    match crate::daemon::running(&home.dir)? {
        Some(pid) => println!("daemon: running (pid {pid})"),
        None => println!("daemon: not running"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/usr/bin/selves"), "/usr/bin/selves");
        assert_eq!(shell_quote("/home/a b/x"), "'/home/a b/x'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
