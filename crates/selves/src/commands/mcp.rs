//! `mcp`: serve memory to an agent over MCP (stdio), and `mcp install`,
//! which tells an agent's client how to start it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::home::{Home, write_atomic};

#[derive(Args)]
pub struct McpArgs {
    #[command(subcommand)]
    command: Option<McpCommand>,
}

#[derive(Subcommand)]
enum McpCommand {
    /// Add selves to an agent's MCP servers (changing nothing else there;
    /// running it again changes nothing)
    Install {
        client: Client,
        /// Print what would be written instead of writing it
        #[arg(long)]
        print: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Client {
    /// ~/.claude.json, `mcpServers`
    ClaudeCode,
    /// ~/.cursor/mcp.json, `mcpServers`
    Cursor,
    /// ~/.codex/config.toml, `[mcp_servers.selves]`
    Codex,
}

pub fn mcp(home: Option<PathBuf>, args: McpArgs) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    match args.command {
        None => crate::mcp::serve(home),
        Some(McpCommand::Install { client, print }) => install(&home, client, print),
    }
}

fn install(home: &Home, client: Client, print: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot tell where this binary is")?;
    let exe = exe.to_string_lossy().into_owned();
    let selves_home = std::path::absolute(&home.dir)?
        .to_string_lossy()
        .into_owned();
    let user = match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => bail!("HOME is not set: cannot tell where the client's config is"),
    };
    let (path, current, next) = match client {
        Client::ClaudeCode | Client::Cursor => {
            let path = match client {
                Client::ClaudeCode => user.join(".claude.json"),
                _ => user.join(".cursor/mcp.json"),
            };
            let current = read(&path)?;
            let mut doc: Value = match &current {
                Some(text) if !text.trim().is_empty() => serde_json::from_str(text)
                    .with_context(|| format!("{} is not JSON: left as it is", path.display()))?,
                _ => json!({}),
            };
            let Some(obj) = doc.as_object_mut() else {
                bail!("{} is not a JSON object: left as it is", path.display());
            };
            let servers = obj.entry("mcpServers").or_insert_with(|| json!({}));
            let Some(servers) = servers.as_object_mut() else {
                bail!(
                    "{}: mcpServers is not an object: left as it is",
                    path.display()
                );
            };
            let mut entry = json!({
                "command": exe,
                "args": ["mcp"],
                "env": {"SELVES_HOME": selves_home},
            });
            if matches!(client, Client::ClaudeCode) {
                entry["type"] = json!("stdio");
            }
            servers.insert("selves".into(), entry);
            let next = serde_json::to_string_pretty(&doc)? + "\n";
            (path, current, next)
        }
        Client::Codex => {
            let path = user.join(".codex/config.toml");
            let current = read(&path)?;
            let block = format!(
                "[mcp_servers.selves]\ncommand = {}\nargs = [\"mcp\"]\nenv = {{ SELVES_HOME = {} }}\n",
                toml_string(&exe),
                toml_string(&selves_home)
            );
            let text = current.clone().unwrap_or_default();
            if !text.is_empty() {
                text.parse::<toml::Table>()
                    .with_context(|| format!("{} is not TOML: left as it is", path.display()))?;
            }
            let next = replace_table(&text, "mcp_servers.selves", &block);
            (path, current, next)
        }
    };
    if print {
        print!("{next}");
        return Ok(());
    }
    if current.as_deref() == Some(next.as_str()) {
        println!("already installed in {} (nothing changed)", path.display());
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // The client's file may hold its own secrets: keep its mode (0600
    // when new).
    let mode = std::fs::metadata(&path).map_or(0o600, |m| m.permissions().mode() & 0o777);
    write_atomic(&path, next.as_bytes(), mode)?;
    println!(
        "installed: {} starts `selves mcp` for {}",
        path.display(),
        selves_home
    );
    println!("restart the agent's client to pick it up");
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `text` with the table `[name]` (its header line to the next table
/// header) replaced by `block`, or `block` appended: the rest of the file,
/// comments included, stays byte for byte.
fn replace_table(text: &str, name: &str, block: &str) -> String {
    let header = format!("[{name}]");
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let Some(start) = lines.iter().position(|l| l.trim() == header) else {
        let mut out = text.to_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(block);
        return out;
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |i| start + 1 + i);
    let mut out: String = lines[..start].concat();
    out.push_str(block);
    if end < lines.len() {
        out.push('\n');
    }
    out.push_str(&lines[end..].concat());
    out
}

#[cfg(test)]
mod tests {
    use super::replace_table;

    #[test]
    fn a_table_is_replaced_in_place_or_appended() {
        let block = "[mcp_servers.selves]\ncommand = \"x\"\n";
        let text =
            "# mine\nmodel = \"o3\"\n\n[mcp_servers.selves]\ncommand = \"old\"\n\n[other]\na = 1\n";
        assert_eq!(
            replace_table(text, "mcp_servers.selves", block),
            "# mine\nmodel = \"o3\"\n\n[mcp_servers.selves]\ncommand = \"x\"\n\n[other]\na = 1\n"
        );
        let appended = replace_table("model = \"o3\"", "mcp_servers.selves", block);
        assert_eq!(appended, format!("model = \"o3\"\n\n{block}"));
        assert_eq!(
            replace_table(&appended, "mcp_servers.selves", block),
            appended
        );
        assert_eq!(replace_table("", "mcp_servers.selves", block), block);
    }
}
