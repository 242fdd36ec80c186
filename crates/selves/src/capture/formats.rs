//! What each source's files look like, and which of their lines become
//! rows (docs/capture.md says what is kept and what is left out).
//!
//! Agent sessions are JSON lines, one event per line, appended to as the
//! session goes on: Claude Code (`~/.claude/projects/<project>/<session>.jsonl`),
//! Codex (`~/.codex/sessions/YYYY/MM/DD/rollout-<time>-<session>.jsonl`) and
//! pi (`~/.pi/agent/sessions/<project>/<time>_<session>.jsonl`). What a
//! person searches for is what was said: user and assistant text. Tool
//! calls, tool output, thinking and the harness's own injected context are
//! left out. Each kept line becomes one row with a stable `msg_id` (the
//! line's own id, or the hash of the line), so reading a file again never
//! makes a second copy.

use std::path::Path;

use selves_wire::{ConversationMeta, Row};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The formats a source can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    ClaudeCode,
    Codex,
    Pi,
    Markdown,
    /// A table of an application's database (see `capture::sqlite`).
    Sqlite,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::ClaudeCode,
        Format::Codex,
        Format::Pi,
        Format::Markdown,
        Format::Sqlite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::ClaudeCode => "claude-code",
            Format::Codex => "codex",
            Format::Pi => "pi",
            Format::Markdown => "markdown",
            Format::Sqlite => "sqlite",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Where the agent keeps its sessions, under the user's home.
    pub fn default_path(self) -> Option<&'static str> {
        match self {
            Format::ClaudeCode => Some(".claude/projects"),
            Format::Codex => Some(".codex/sessions"),
            Format::Pi => Some(".pi/agent/sessions"),
            Format::Markdown | Format::Sqlite => None,
        }
    }

    /// Which files of the folder are read.
    pub fn reads(self, path: &Path) -> bool {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match self {
            Format::Markdown => ext.eq_ignore_ascii_case("md") || ext == "markdown",
            Format::Sqlite => false,
            _ => ext == "jsonl",
        }
    }
}

/// What a session file's earlier lines said that later lines do not
/// repeat (Codex and pi name the session and folder once, at the top).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_ts: Option<i64>,
}

/// The row one line of a session file makes, if any. `file` is the file's
/// name (a session id is taken from it when the lines name none).
pub fn session_line(format: Format, line: &[u8], file: &Path, ctx: &mut Context) -> Option<Row> {
    let (role, text, ts, msg_id) = match format {
        Format::ClaudeCode => claude_code(line, ctx)?,
        Format::Codex => codex(&serde_json::from_slice(line).ok()?, line, ctx)?,
        Format::Pi => pi(&serde_json::from_slice(line).ok()?, line, ctx)?,
        Format::Markdown | Format::Sqlite => return None,
    };
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let session = ctx.session.clone().or_else(|| session_from_name(file))?;
    let ts = ts.unwrap_or(0);
    if ctx.first_ts.is_none() && ts > 0 {
        ctx.first_ts = Some(ts);
    }
    if ctx.title.is_none() && role == "user" {
        ctx.title = Some(title_of(text));
    }
    let source = format.name();
    Some(Row {
        source: source.to_owned(),
        conversation_id: format!("{source}-{session}"),
        msg_id: Some(msg_id),
        uuid: None,
        sender: Some(if role == "user" { "me" } else { source }.to_owned()),
        role: role.to_owned(),
        text: clip(text).to_owned(),
        ts,
        edited_at: None,
        channel: None,
        metadata: None,
        origin: None,
        conversation: Some(ConversationMeta {
            title: ctx.title.clone(),
            first_ts: ctx.first_ts,
            last_ts: Some(ts),
            project_path: ctx.cwd.clone(),
            parent_conversation_id: None,
        }),
    })
}

type Kept = (&'static str, String, Option<i64>, String);

/// Claude Code: `{"type":"user"|"assistant", "uuid", "sessionId", "cwd",
/// "timestamp", "message": {"role", "content": text | [blocks]}}`; tool
/// results come back as user lines holding only `tool_result` blocks.
///
/// Most of a session's bytes are tool output, which is not kept: lines are
/// read into borrowed fields with the message left raw, and a message is
/// parsed only as far as its text blocks (serde skips the rest without
/// building it). Capture reads at disk speed this way.
fn claude_code(line: &[u8], ctx: &mut Context) -> Option<Kept> {
    use serde_json::value::RawValue;
    use std::borrow::Cow;
    #[derive(Deserialize)]
    struct Line<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
        #[serde(rename = "sessionId", borrow)]
        session: Option<Cow<'a, str>>,
        #[serde(borrow)]
        cwd: Option<Cow<'a, str>>,
        #[serde(borrow)]
        uuid: Option<Cow<'a, str>>,
        #[serde(borrow)]
        timestamp: Option<Cow<'a, str>>,
        #[serde(rename = "isMeta", default)]
        is_meta: Option<bool>,
        #[serde(borrow)]
        message: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Message<'a> {
        #[serde(borrow)]
        content: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Block<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow)]
        text: Option<Cow<'a, str>>,
    }
    let v: Line = serde_json::from_slice(line).ok()?;
    if let Some(s) = &v.session {
        ctx.session.get_or_insert_with(|| s.to_string());
    }
    if let Some(c) = &v.cwd {
        ctx.cwd.get_or_insert_with(|| c.to_string());
    }
    let role = match v.kind.as_deref()? {
        "user" => "user",
        "assistant" => "assistant",
        _ => return None,
    };
    if v.is_meta == Some(true) {
        return None;
    }
    let content = serde_json::from_str::<Message>(v.message?.get())
        .ok()?
        .content?;
    // A string, or blocks (an untagged enum would buffer the whole value
    // before choosing).
    let raw = content.get();
    let text = if raw.starts_with('"') {
        serde_json::from_str::<Cow<str>>(raw).ok()?.into_owned()
    } else {
        serde_json::from_str::<Vec<Block>>(raw)
            .ok()?
            .iter()
            .filter(|b| b.kind.as_deref() == Some("text"))
            .filter_map(|b| b.text.as_deref())
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    if role == "user" && injected(&text) {
        return None;
    }
    let id = v.uuid?.into_owned();
    Some((role, text, v.timestamp.as_deref().and_then(seconds), id))
}

/// Codex rollouts: `{"timestamp", "type": "session_meta"|"response_item"|
/// "event_msg"|"turn_context", "payload": {…}}`; messages are
/// `response_item`s of type `message` (the `event_msg` copies are skipped).
/// Rollouts from before the envelope hold the items themselves.
fn codex(v: &Value, line: &[u8], ctx: &mut Context) -> Option<Kept> {
    let item = if v.get("payload").is_some() {
        &v["payload"]
    } else {
        v
    };
    if v["type"] == "session_meta"
        || (v.get("payload").is_none() && v.get("instructions").is_some())
    {
        if let Some(id) = item["id"].as_str() {
            ctx.session = Some(id.to_owned());
        }
        if let Some(c) = item["cwd"].as_str() {
            ctx.cwd = Some(c.to_owned());
        }
        return None;
    }
    if let Some(c) = v["payload"]["cwd"]
        .as_str()
        .filter(|_| v["type"] == "turn_context")
    {
        ctx.cwd.get_or_insert_with(|| c.to_owned());
    }
    if item["type"] != "message" {
        return None;
    }
    let role = match item["role"].as_str()? {
        "user" => "user",
        "assistant" => "assistant",
        _ => return None,
    };
    let text = text_of(&item["content"], &["input_text", "output_text", "text"]);
    if role == "user" && injected(&text) {
        return None;
    }
    let ts = v["timestamp"].as_str().and_then(seconds);
    Some((role, text, ts, line_id(line)))
}

/// pi: a `{"type":"session","id","cwd","timestamp"}` header, then
/// `{"type":"message","id"?,"timestamp","message":{"role":"user"|
/// "assistant"|"toolResult","content": text | [blocks]}}` and entries of
/// other types (model changes, compactions).
fn pi(v: &Value, line: &[u8], ctx: &mut Context) -> Option<Kept> {
    match v["type"].as_str()? {
        "session" => {
            if let Some(id) = v["id"].as_str() {
                ctx.session = Some(id.to_owned());
            }
            if let Some(c) = v["cwd"].as_str() {
                ctx.cwd = Some(c.to_owned());
            }
            None
        }
        "message" => {
            let m = &v["message"];
            let role = match m["role"].as_str()? {
                "user" => "user",
                "assistant" => "assistant",
                _ => return None,
            };
            let text = text_of(&m["content"], &["text"]);
            let ts = v["timestamp"]
                .as_str()
                .and_then(seconds)
                .or_else(|| m["timestamp"].as_i64().map(|ms| ms / 1000));
            let id = v["id"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| line_id(line));
            Some((role, text, ts, id))
        }
        _ => None,
    }
}

/// A note: the whole file is one row, edited as the file is. Its identity
/// is its path in the folder, so two nodes that capture the same synced
/// folder make one row, not two.
pub fn note(source: &str, rel: &str, text: &str, mtime_ms: i64) -> Option<Row> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let title = text
        .lines()
        .find_map(|l| {
            l.strip_prefix('#')
                .map(|t| t.trim_start_matches('#').trim())
        })
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            Path::new(rel)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    Some(Row {
        source: source.to_owned(),
        conversation_id: rel.to_owned(),
        msg_id: Some("note".to_owned()),
        uuid: None,
        role: "note".to_owned(),
        sender: None,
        text: clip(text).to_owned(),
        ts: mtime_ms / 1000,
        edited_at: Some(mtime_ms),
        channel: None,
        metadata: None,
        origin: None,
        conversation: Some(ConversationMeta {
            title: Some(title_of(&title)),
            first_ts: None,
            last_ts: Some(mtime_ms / 1000),
            project_path: None,
            parent_conversation_id: None,
        }),
    })
}

/// The text of a message's content: a string, or the `text` of its blocks
/// of the kinds given, one paragraph each.
fn text_of(content: &Value, kinds: &[&str]) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"].as_str().is_some_and(|t| kinds.contains(&t)))
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n\n"),
        _ => String::new(),
    }
}

/// Text the harness puts in the user's turn, not the user: environment
/// and instruction blocks, slash-command echoes, system reminders.
fn injected(text: &str) -> bool {
    let t = text.trim_start();
    [
        "<environment_context>",
        "<user_instructions>",
        "# AGENTS.md instructions",
        "<command-name>",
        "<command-message>",
        "<local-command-stdout>",
        "<system-reminder>",
        "Caveat: The messages below were generated",
    ]
    .iter()
    .any(|p| t.starts_with(p))
}

/// A line without an id of its own is known by its hash: the same line
/// read again is the same row.
fn line_id(line: &[u8]) -> String {
    blake3::hash(line).to_hex()[..32].to_owned()
}

/// The session id at the end of a file name (`…-<uuid>.jsonl`,
/// `…_<uuid>.jsonl`, `<uuid>.jsonl`).
fn session_from_name(file: &Path) -> Option<String> {
    let stem = file.file_stem()?.to_str()?;
    let id = if stem.len() >= 36 {
        &stem[stem.len() - 36..]
    } else {
        stem
    };
    (!id.is_empty()).then(|| id.to_owned())
}

/// A title: the first line, at most 80 characters.
fn title_of(text: &str) -> String {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    match first.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &first[..i]),
        None => first.to_owned(),
    }
}

/// At most the row's size limit, cut at a character boundary.
fn clip(text: &str) -> &str {
    let max = selves_wire::row::MAX_TEXT_BYTES;
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An RFC 3339 time as Unix seconds.
pub fn seconds(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(format: Format, file: &str, text: &str) -> Vec<Row> {
        let mut ctx = Context::default();
        text.lines()
            .filter_map(|l| session_line(format, l.as_bytes(), Path::new(file), &mut ctx))
            .collect()
    }

    #[test]
    fn claude_code_keeps_what_was_said() {
        let rows = lines(
            Format::ClaudeCode,
            "0b7c5f0e-7d5a-4a53-9f62-2f1d2c3b4a59.jsonl",
            r#"{"type":"summary","summary":"Fixing the parser","leafUuid":"x"}
{"parentUuid":null,"isSidechain":false,"cwd":"/home/ana/parser","sessionId":"s1","type":"user","message":{"role":"user","content":"why does the parser drop the last line?"},"uuid":"u1","timestamp":"2026-03-01T10:00:00.123Z"}
{"parentUuid":"u1","cwd":"/home/ana/parser","sessionId":"s1","type":"assistant","message":{"id":"msg_1","role":"assistant","content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"It stops at EOF without a newline."},{"type":"tool_use","id":"t1","name":"Read","input":{}}]},"uuid":"u2","timestamp":"2026-03-01T10:00:05Z"}
{"parentUuid":"u2","sessionId":"s1","type":"user","message":{"role":"user","content":[{"tool_use_id":"t1","type":"tool_result","content":"fn parse() {}"}]},"uuid":"u3","timestamp":"2026-03-01T10:00:06Z"}
{"sessionId":"s1","type":"user","isMeta":true,"message":{"role":"user","content":"Caveat: The messages below were generated by the user"},"uuid":"u4","timestamp":"2026-03-01T10:00:07Z"}
{"sessionId":"s1","type":"user","message":{"role":"user","content":"<command-name>/clear</command-name>"},"uuid":"u5","timestamp":"2026-03-01T10:00:08Z"}
not json at all
"#,
        );
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].conversation_id, "claude-code-s1");
        assert_eq!(rows[0].msg_id.as_deref(), Some("u1"));
        assert_eq!(rows[0].ts, 1772359200);
        assert_eq!(rows[1].role, "assistant");
        assert_eq!(rows[1].text, "It stops at EOF without a newline.");
        let c = rows[1].conversation.as_ref().unwrap();
        assert_eq!(c.project_path.as_deref(), Some("/home/ana/parser"));
        assert_eq!(
            c.title.as_deref(),
            Some("why does the parser drop the last line?")
        );
    }

    #[test]
    fn codex_keeps_messages_not_context_or_tools() {
        let rows = lines(
            Format::Codex,
            "rollout-2026-03-01T10-00-00-0199a0b1-2c3d-7e4f-8a9b-0c1d2e3f4a5b.jsonl",
            r#"{"timestamp":"2026-03-01T10:00:00.000Z","type":"session_meta","payload":{"id":"0199a0b1-2c3d-7e4f-8a9b-0c1d2e3f4a5b","timestamp":"2026-03-01T10:00:00.000Z","cwd":"/srv/app","originator":"codex_cli_rs","cli_version":"0.60.0"}}
{"timestamp":"2026-03-01T10:00:01.000Z","type":"response_item","payload":{"type":"message","role":"user","content":[{"type":"input_text","text":"<environment_context>\n  <cwd>/srv/app</cwd>\n</environment_context>"}]}}
{"timestamp":"2026-03-01T10:00:02.000Z","type":"response_item","payload":{"type":"message","role":"user","content":[{"type":"input_text","text":"add a health endpoint"}]}}
{"timestamp":"2026-03-01T10:00:02.000Z","type":"event_msg","payload":{"type":"user_message","message":"add a health endpoint","images":[]}}
{"timestamp":"2026-03-01T10:00:03.000Z","type":"response_item","payload":{"type":"reasoning","summary":[]}}
{"timestamp":"2026-03-01T10:00:04.000Z","type":"response_item","payload":{"type":"function_call","name":"shell","arguments":"{}","call_id":"c1"}}
{"timestamp":"2026-03-01T10:00:05.000Z","type":"response_item","payload":{"type":"function_call_output","call_id":"c1","output":"ok"}}
{"timestamp":"2026-03-01T10:00:06.000Z","type":"response_item","payload":{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Added GET /health."}]}}
"#,
        );
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(
            rows[0].conversation_id,
            "codex-0199a0b1-2c3d-7e4f-8a9b-0c1d2e3f4a5b"
        );
        assert_eq!(rows[0].text, "add a health endpoint");
        assert_eq!(rows[1].text, "Added GET /health.");
        assert_ne!(rows[0].msg_id, rows[1].msg_id);
        assert_eq!(
            rows[1]
                .conversation
                .as_ref()
                .unwrap()
                .project_path
                .as_deref(),
            Some("/srv/app")
        );
    }

    #[test]
    fn pi_keeps_user_and_assistant_text() {
        let rows = lines(
            Format::Pi,
            "2026-03-01T10-00-00-000Z_5f2c1a9e-3b7d-4c8e-9a1f-6d2e8b4c0a71.jsonl",
            r#"{"type":"session","version":3,"id":"5f2c1a9e-3b7d-4c8e-9a1f-6d2e8b4c0a71","timestamp":"2026-03-01T10:00:00.000Z","cwd":"/home/ana/site"}
{"type":"message","id":"a1","parentId":null,"timestamp":"2026-03-01T10:00:01.000Z","message":{"role":"user","content":[{"type":"text","text":"make the header sticky"}],"timestamp":1772359201000}}
{"type":"message","id":"a2","parentId":"a1","timestamp":"2026-03-01T10:00:02.000Z","message":{"role":"assistant","content":[{"type":"thinking","thinking":"css"},{"type":"toolCall","id":"t","name":"edit","arguments":{}},{"type":"text","text":"Done: position: sticky."}],"model":"m"}}
{"type":"message","id":"a3","parentId":"a2","timestamp":"2026-03-01T10:00:03.000Z","message":{"role":"toolResult","toolCallId":"t","content":[{"type":"text","text":"edited"}]}}
{"type":"model_change","id":"a4","provider":"x","modelId":"y"}
"#,
        );
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(
            rows[0].conversation_id,
            "pi-5f2c1a9e-3b7d-4c8e-9a1f-6d2e8b4c0a71"
        );
        assert_eq!(rows[0].msg_id.as_deref(), Some("a1"));
        assert_eq!(rows[1].text, "Done: position: sticky.");
    }

    #[test]
    fn a_note_is_one_row_titled_by_its_heading() {
        let r = note(
            "notes",
            "ideas/garden.md",
            "# Garden plan\n\nTomatoes.\n",
            1772359200000,
        )
        .unwrap();
        assert_eq!(r.conversation_id, "ideas/garden.md");
        assert_eq!(
            r.conversation.unwrap().title.as_deref(),
            Some("Garden plan")
        );
        assert!(note("notes", "empty.md", "  \n", 0).is_none());
    }
}
