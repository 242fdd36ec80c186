//! How the binary talks to people and scripts: exit codes, progress bars
//! (on a terminal only), times, JSON.

use std::io::IsTerminal as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use selves_client::SyncError;

/// Exit codes. Scripts (and agents' hooks) can act on these. 0 is success
/// and 2 a bad command line (clap's own).
pub mod code {
    pub const FAILED: u8 = 1;
    /// `status --brief`: a peer is down past its threshold (2, as the
    /// issue of loud status asks; a bad command line is also 2, but
    /// `status --brief` has no arguments to get wrong).
    pub const DOWN: u8 = 2;
    /// `verify`: the peer holds different state.
    pub const DIVERGED: u8 = 3;
    /// The peer refused our token: re-pair.
    pub const AUTH: u8 = 4;
    /// The peer could not be reached (after retries).
    pub const UNREACHABLE: u8 = 5;
    /// The peer's certificate is not the pinned one.
    pub const CERTIFICATE: u8 = 6;
    /// The peer speaks another protocol version.
    pub const VERSION: u8 = 7;
}

/// An error that carries its exit code, after its message was printed.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}
impl std::error::Error for Exit {}

/// The exit code for a failed command.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
        return *code;
    }
    match e.downcast_ref::<SyncError>() {
        Some(s) => sync_code(s),
        None => code::FAILED,
    }
}

pub fn sync_code(e: &SyncError) -> u8 {
    match e {
        SyncError::Unauthorized { .. } => code::AUTH,
        SyncError::Network { .. } => code::UNREACHABLE,
        SyncError::PinMismatch { .. } | SyncError::ForgedCertificate { .. } => code::CERTIFICATE,
        SyncError::ProtocolMismatch { .. } | SyncError::SchemaMismatch { .. } => code::VERSION,
        _ => code::FAILED,
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// "3m 12s ago", "in 5m", for a millisecond timestamp.
pub fn ago(ms: i64) -> String {
    let delta = now_ms().saturating_sub(ms);
    let rounded = |d: i64| {
        let secs = d.unsigned_abs() / 1000;
        let secs = if secs >= 3600 { secs - secs % 60 } else { secs };
        humantime::format_duration(Duration::from_secs(secs)).to_string()
    };
    if delta >= 0 {
        if delta < 1000 {
            "just now".to_owned()
        } else {
            format!("{} ago", rounded(delta))
        }
    } else {
        format!("in {}", rounded(delta))
    }
}

/// RFC 3339 for a timestamp in seconds (clamped to 1970–9999: what is
/// stored is checked against that range, and display never fails).
pub fn date(secs: i64) -> String {
    let secs = secs.clamp(0, selves_wire::row::MAX_TS);
    let t = UNIX_EPOCH + Duration::from_secs(secs as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// "12.3 MB", "512 B".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `text` safe to print on a terminal: control characters (ESC and the
/// rest, which could move the cursor or, through OSC 52, write the
/// clipboard) are shown as escapes such as `\u{1b}`. JSON output is never
/// passed through this: it escapes them itself.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// `text` on one line (whitespace runs as one space), at most `chars`
/// characters, `…` where it was cut.
pub fn one_line(text: &str, chars: usize) -> String {
    let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one.char_indices().nth(chars) {
        Some((i, _)) => format!("{}…", &one[..i]),
        None => one,
    }
}

/// `1 record`, `2 records`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Sync progress on stderr when it is a terminal; silent otherwise.
pub struct SyncBar {
    bar: ProgressBar,
}

impl SyncBar {
    pub fn new(label: &str) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:.bold} [{bar:30}] {pos}/{len} records {per_sec} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_owned());
            bar
        } else {
            ProgressBar::hidden()
        };
        SyncBar { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl selves_client::Progress for SyncBar {
    fn planned(&self, to_pull: u64, to_push: u64) {
        self.bar.set_length(to_pull + to_push);
    }
    fn pulled(&self, records: u64) {
        self.bar.inc(records);
    }
    fn pushed(&self, records: u64) {
        self.bar.inc(records);
    }
    fn waiting(&self, why: &str, wait: Duration) {
        if self.bar.is_hidden() {
            tracing::info!("{why}; waiting {} ms", wait.as_millis());
        } else {
            self.bar
                .set_message(format!("({why}; waiting {} ms)", wait.as_millis()));
        }
    }
}

/// A spinner with a counter for long local work (import, indexing).
pub fn counter(label: &str) -> ProgressBar {
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {pos} {per_sec}")
                .expect("valid template"),
        );
        bar.set_prefix(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    } else {
        ProgressBar::hidden()
    }
}
