//! `selves mcp`: this node's memory served to an agent over MCP (stdio),
//! on the official Rust SDK (`rmcp`). Tools: `search`, `recent`,
//! `conversation`, `remember`, `nodes`. Every answer is text written for
//! the agent to read; the store is read as the CLI reads it, so what the
//! daemon syncs in is found at once.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt as _, schemars, tool, tool_handler, tool_router};
use selves_store::{CaptureOptions, SearchQuery, Store};
use selves_wire::{ConversationMeta, Row};
use serde::Deserialize;

use crate::home::Home;
use crate::output::{self, now_ms};

/// Results per answer unless the agent asks for another number, and the
/// most it may ask for.
const DEFAULT_LIMIT: u32 = 10;
const MAX_LIMIT: u32 = 200;

#[derive(Clone)]
pub struct Memory {
    home: Arc<Home>,
    store: Arc<Store>,
    tool_router: ToolRouter<Memory>,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct SearchArgs {
    /// Words to find; every word must match (any text is safe)
    query: String,
    /// Only messages captured on this node (its name, as `nodes` lists them)
    origin: Option<String>,
    /// Only messages from this source (claude-code, codex, pi, selves, …)
    source: Option<String>,
    /// Only messages since then: a date or time ("2026-11-01",
    /// "2026-11-01T09:00:00Z") or a span back from now ("7d", "12h")
    since: Option<String>,
    /// How many results, best first (default 10, at most 200)
    limit: Option<u32>,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct RecentArgs {
    /// How many messages, newest first (default 10, at most 200)
    limit: Option<u32>,
    /// Only messages captured on this node
    origin: Option<String>,
    /// Only messages from this source
    source: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct ConversationArgs {
    /// The conversation's id, as `search` and `recent` show it
    id: String,
    /// The source, when two sources use the same id
    source: Option<String>,
    /// How many messages from its start (default 200)
    limit: Option<u32>,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct RememberArgs {
    /// What to remember
    text: String,
    /// The conversation to file it under (default "notes")
    conversation: Option<String>,
    /// The conversation's title
    title: Option<String>,
}

#[tool_router]
impl Memory {
    pub fn new(home: Home, store: Arc<Store>) -> Memory {
        Memory {
            home: Arc::new(home),
            store,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Search the memory every machine shares (conversations with agents and users, notes), best matches first, with a snippet of each"
    )]
    fn search(&self, Parameters(a): Parameters<SearchArgs>) -> Result<String, String> {
        let since = a.since.as_deref().map(since_secs).transpose()?;
        let limit = a.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as usize;
        let hits = self
            .store
            .search(&SearchQuery {
                text: a.query.clone(),
                origin: a.origin,
                source: a.source,
                since,
                limit,
            })
            .map_err(|e| format!("search failed: {e}"))?;
        if hits.is_empty() {
            return Ok(format!("no messages match {:?}", a.query));
        }
        let mut out = format!(
            "{} for {:?}, best first:\n",
            output::count(hits.len() as u64, "match", "matches"),
            a.query
        );
        for (i, h) in hits.iter().enumerate() {
            out.push_str(&format!(
                "\n[{}] {}\n    {}\n",
                i + 1,
                header(&h.row),
                h.snippet
            ));
        }
        Ok(out)
    }

    #[tool(description = "The newest messages in memory, from every machine, newest first")]
    fn recent(&self, Parameters(a): Parameters<RecentArgs>) -> Result<String, String> {
        let limit = a.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as usize;
        let rows = self
            .store
            .recent(a.origin.as_deref(), a.source.as_deref(), limit)
            .map_err(|e| format!("cannot read memory: {e}"))?;
        if rows.is_empty() {
            return Ok("memory is empty".into());
        }
        let mut out = String::new();
        for r in &rows {
            out.push_str(&format!(
                "{}\n    {}\n",
                header(r),
                output::one_line(&r.text, 300)
            ));
        }
        Ok(out)
    }

    #[tool(description = "One conversation, in order, by its id (as search and recent show it)")]
    fn conversation(&self, Parameters(a): Parameters<ConversationArgs>) -> Result<String, String> {
        let limit = a.limit.unwrap_or(MAX_LIMIT).clamp(1, 10 * MAX_LIMIT) as usize;
        let rows = self
            .store
            .conversation(&a.id, a.source.as_deref(), limit)
            .map_err(|e| format!("cannot read memory: {e}"))?;
        let Some(first) = rows.first() else {
            return Err(format!("no conversation {:?} in memory", a.id));
        };
        let c = first.conversation.clone().unwrap_or_default();
        let mut out = format!("conversation {} ({})", a.id, first.source);
        if let Some(t) = &c.title {
            out.push_str(&format!(": {t}"));
        }
        if let Some(p) = &c.project_path {
            out.push_str(&format!("\nproject: {p}"));
        }
        out.push('\n');
        for r in &rows {
            out.push_str(&format!(
                "\n[{} {} @{}]\n{}\n",
                output::date(r.ts),
                r.role,
                r.origin.as_deref().unwrap_or("?"),
                r.text
            ));
        }
        Ok(out)
    }

    #[tool(
        description = "Write a message into memory; it reaches every machine with the next sync"
    )]
    fn remember(&self, Parameters(a): Parameters<RememberArgs>) -> Result<String, String> {
        if a.text.trim().is_empty() {
            return Err("nothing to remember: the text is empty".into());
        }
        if let Some(rule) = selves_share::secrets::looks_secret(a.text.as_bytes()) {
            return Err(format!(
                "not remembered: the text holds what looks like {rule}, and secrets are never synced"
            ));
        }
        let now = now_ms();
        let conversation = a.conversation.unwrap_or_else(|| "notes".into());
        let msg_id = crate::commands::memory::new_uuid();
        let me = self.home.name().to_string();
        let row = Row {
            source: "selves".into(),
            conversation_id: conversation.clone(),
            msg_id: Some(msg_id.clone()),
            uuid: Some(crate::commands::memory::new_uuid()),
            role: "assistant".into(),
            sender: Some("mcp".into()),
            text: a.text,
            ts: now / 1000,
            edited_at: None,
            channel: None,
            metadata: None,
            origin: Some(me.clone()),
            conversation: Some(ConversationMeta {
                title: a.title,
                first_ts: Some(now / 1000),
                last_ts: Some(now / 1000),
                project_path: None,
                parent_conversation_id: None,
            }),
        };
        let summary = self
            .store
            .capture(
                vec![row],
                &CaptureOptions {
                    stamp_origin: Some(me),
                    ..CaptureOptions::default()
                },
            )
            .map_err(|e| format!("not remembered: {e}"))?;
        if let Some((_, why)) = summary.refused.first() {
            return Err(format!("not remembered: {why}"));
        }
        let _ = self.store.catch_up_index(|_| {});
        Ok(format!("remembered selves/{conversation}/{msg_id}"))
    }

    #[tool(
        description = "Which machines share this memory, what each is for, and whether sync with each is healthy (say so to the user when it is not)"
    )]
    fn nodes(&self) -> Result<String, String> {
        let status = crate::commands::node::gather(&self.home, &self.store)
            .map_err(|e| format!("cannot read this node's status: {e:#}"))?;
        let cards = self
            .store
            .cards()
            .map_err(|e| format!("cannot read the nodes: {e}"))?;
        let mut out = format!(
            "this node: {} — sync {}; memory: {}\n",
            status.node.name,
            status.health,
            output::count(status.memory.rows, "row", "rows")
        );
        if status.daemon.is_none() {
            out.push_str(
                "no daemon runs here: memory syncs only when someone runs `selves sync`\n",
            );
        }
        out.push_str("\nnodes:\n");
        for c in &cards {
            let mut line = format!("- {}", c.name);
            if c.id.to_string() == status.node.id {
                line.push_str(" (this node)");
            }
            for (k, v) in [
                ("role", &c.role),
                ("location", &c.location),
                ("interface", &c.interface),
            ] {
                if !v.is_empty() {
                    line.push_str(&format!("; {k}: {v}"));
                }
            }
            out.push_str(&line);
            out.push('\n');
        }
        if !status.peers.is_empty() {
            out.push_str("\nsync:\n");
            for p in &status.peers {
                let h = &p.health;
                let last = h.last_success_at.map_or("never synced".to_owned(), |t| {
                    format!("last synced {}", output::ago(t))
                });
                out.push_str(&format!("- with {}: {:?}, {last}\n", h.peer, h.state).to_lowercase());
            }
        }
        if status.problems.is_empty() {
            out.push_str("\nno problems\n");
        } else {
            out.push_str("\nproblems:\n");
            for p in &status.problems {
                out.push_str(&format!("{}\n", p.line));
            }
        }
        Ok(out)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Memory {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("selves", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "selves is the memory this user's agents share across machines: conversations \
                 captured from agent sessions and chats, and notes. Search it before asking the \
                 user something they may have said before; `nodes` says whether every machine \
                 is in sync.",
            )
    }
}

/// Serves MCP on stdin/stdout until the client closes it.
pub fn serve(home: Home) -> anyhow::Result<()> {
    let store = home.open_store()?;
    let rt = crate::runtime()?;
    rt.block_on(async move {
        let service = Memory::new(home, store)
            .serve(rmcp::transport::stdio())
            .await?;
        service.waiting().await?;
        anyhow::Ok(())
    })
}

/// One line naming a row: when, where from, which conversation, who.
fn header(r: &Row) -> String {
    format!(
        "{} · {} · {} · @{} · {}",
        output::date(r.ts),
        r.source,
        r.conversation_id,
        r.origin.as_deref().unwrap_or("?"),
        r.role
    )
}

/// `since` as Unix seconds: a span back from now, or a date or time.
fn since_secs(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(span) = humantime::parse_duration(s) {
        return Ok(now_ms() / 1000 - span.as_secs() as i64);
    }
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    crate::capture::formats::seconds(&full).ok_or_else(|| {
        format!("since: {s:?} is neither a date (2026-11-01), a time (2026-11-01T09:00:00Z) nor a span (7d)")
    })
}
