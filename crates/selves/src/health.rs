//! Health: how each peer and share is doing, and the loud lines for
//! `selves status --brief`. Pure functions of what the store recorded, so
//! the rules are tested without waiting for real time to pass.
//!
//! A peer is
//! - `ok`: its last attempt succeeded;
//! - `healing`: its last attempt failed, but it synced within its
//!   down-after time (the daemon is retrying);
//! - `down`: no success for longer than its down-after time (default an
//!   hour; `selves peer set PEER --down-after 10m`);
//! - `auth-failed`: it refused our token or showed another certificate:
//!   retrying cannot help, a person must re-pair;
//! - `never-synced`: paired, not synced yet (within down-after of pairing).

use selves_store::{Protocol, Remote};
use serde::Serialize;

type Millis = i64;

pub const DEFAULT_DOWN_AFTER_MS: i64 = 60 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    Ok,
    Healing,
    Down,
    AuthFailed,
    NeverSynced,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerHealth {
    pub peer: String,
    pub state: PeerState,
    pub last_success_at: Option<Millis>,
    pub consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Memory records this node holds that the peer did not at its last
    /// success (`None` for memex peers: not tracked).
    pub waiting_memories: Option<u64>,
    pub down_after_ms: i64,
    /// Since the last success, or since pairing when there was none.
    pub silent_ms: i64,
    /// Past its down-after time without a success.
    pub overdue: bool,
}

pub fn assess(r: &Remote, waiting: u64, now: Millis) -> PeerHealth {
    let down_after_ms = r.down_after_ms.unwrap_or(DEFAULT_DOWN_AFTER_MS);
    let silent_ms = (now - r.last_success_at.unwrap_or(r.added_at)).max(0);
    let overdue = silent_ms > down_after_ms;
    let failing = r.consecutive_failures > 0;
    let refused = failing
        && matches!(
            r.last_error_class.as_deref(),
            Some("auth" | "certificate" | "version")
        );
    let state = if refused {
        PeerState::AuthFailed
    } else if overdue {
        PeerState::Down
    } else if failing {
        PeerState::Healing
    } else if r.last_success_at.is_none() {
        PeerState::NeverSynced
    } else {
        PeerState::Ok
    };
    PeerHealth {
        peer: r.alias.to_string(),
        state,
        last_success_at: r.last_success_at,
        consecutive_failures: r.consecutive_failures,
        last_error_class: r.last_error_class.clone(),
        last_error: r.last_error.clone(),
        waiting_memories: (r.protocol != Protocol::Memex).then_some(waiting),
        down_after_ms,
        silent_ms,
        overdue,
    }
}

/// A share's problems worth a line.
#[derive(Debug, Clone, Serialize)]
pub struct ShareHealth {
    pub share: String,
    pub conflicts: usize,
    pub held: usize,
    /// Why the share stopped itself, and since when, until it syncs again.
    pub stopped: Option<(String, Millis)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Something needs a look; sync goes on.
    Degraded,
    /// A peer is past its down-after time: memory is not being backed up.
    Down,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub line: String,
}

/// A tunnel as its keeper last recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct TunnelHealth {
    pub tunnel: String,
    pub state: String,
    pub detail: Option<String>,
}

/// What the store knows about trust: records refused, forks, tokens
/// offered by the wrong node, this node's own key found in another home.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrustHealth {
    /// Why this node's key is believed to be in two homes.
    pub clash: Option<String>,
    pub forks: Vec<selves_store::Fork>,
    pub refusals: Vec<selves_store::RefusalCount>,
    /// (token's peer, refused node, address, when).
    pub token_claims: Vec<(String, String, Option<String>, Millis)>,
    /// When a daemon that died without stopping was last alive.
    pub daemon_died_at: Option<Millis>,
    /// Peers that call this node, past their down-after time: (name, when
    /// last seen, down after).
    pub quiet_callers: Vec<(String, Millis, Millis)>,
    /// Unknown tokens presented, per address.
    pub login_failures: Vec<selves_store::LoginFailures>,
    /// The home's disk is full: the store was opened read-only.
    pub disk_full: Option<std::path::PathBuf>,
}

/// Unknown tokens from one address in the last hour worth a line.
const LOGIN_FAILURES_SHOWN: u64 = 10;

/// How long a refusal keeps status degraded after it last happened.
pub const REFUSAL_SHOWN_MS: Millis = 7 * 24 * 3600 * 1000;

fn trust_problems(t: &TrustHealth, now: Millis, out: &mut Vec<Problem>) {
    if let Some(home) = &t.disk_full {
        out.push(Problem {
            severity: Severity::Down,
            line: format!(
                "⚠ the disk holding {} is full: nothing can be written, so nothing syncs — free some space",
                home.display()
            ),
        });
    }
    for f in &t.login_failures {
        let (addr, count) = (&f.addr, f.count);
        if count < LOGIN_FAILURES_SHOWN || now - f.last_at > 3600 * 1000 {
            continue;
        }
        out.push(Problem {
            severity: Severity::Degraded,
            line: format!(
                "⚠ {count} requests with unknown tokens from {addr} in {}{}: someone is guessing tokens, or a peer holds a revoked one",
                span(f.last_at - f.first_at),
                if f.throttled_at.is_some_and(|t| now - t < 3600 * 1000) {
                    " (throttled)"
                } else {
                    ""
                }
            ),
        });
    }
    for (peer, seen, _) in &t.quiet_callers {
        out.push(Problem {
            severity: Severity::Down,
            line: format!(
                "⚠ {peer} has not called this node for {} (it syncs by calling here): is it down, or its tunnel?",
                span(now - seen)
            ),
        });
    }
    if let Some(at) = t.daemon_died_at {
        out.push(Problem {
            severity: Severity::Degraded,
            line: format!(
                "⚠ the daemon died without stopping {} ago (killed, or crashed): nothing syncs by itself — start it again (`selves daemon`, or `selves service install`)",
                span(now - at)
            ),
        });
    }
    if let Some(why) = &t.clash {
        out.push(Problem {
            severity: Severity::Down,
            line: format!(
                "⚠ this node's key is in two homes ({}) — run `selves init --new-identity` in the copy",
                shorten(why, 120)
            ),
        });
    }
    for f in &t.forks {
        let who = f.name.clone().unwrap_or_else(|| f.node.short().to_owned());
        out.push(Problem {
            severity: Severity::Down,
            line: format!(
                "⚠ node {who} has two signed versions of its {} records from {} on (the second from {}): its key is in two homes — run `selves init --new-identity` in the copy",
                f.stream,
                f.seq,
                if f.peer.is_empty() { "a peer" } else { &f.peer }
            ),
        });
    }
    for r in t
        .refusals
        .iter()
        .filter(|r| now - r.last_at < REFUSAL_SHOWN_MS)
    {
        let what = if r.kind == "fork" {
            "records forking a log held here"
        } else {
            "records not written by the node they claim"
        };
        out.push(Problem {
            severity: Severity::Degraded,
            line: format!(
                "⚠ {} refused from {} ({what}, node {}, last {} ago): {}",
                if r.count == 1 {
                    "1 batch".to_owned()
                } else {
                    format!("{} batches", r.count)
                },
                r.peer,
                &r.node[..r.node.len().min(8)],
                span(now - r.last_at),
                shorten(&r.last_reason, 100)
            ),
        });
    }
    for (peer, node, addr, at) in t
        .token_claims
        .iter()
        .filter(|c| now - c.3 < REFUSAL_SHOWN_MS)
    {
        out.push(Problem {
            severity: Severity::Degraded,
            line: format!(
                "⚠ node {} tried the token of {peer} from {} {} ago, but it is bound to another node — if it leaked: `selves rotate-token {peer}`",
                &node[..node.len().min(8)],
                addr.as_deref().unwrap_or("an unknown address"),
                span(now - at)
            ),
        });
    }
}

/// One line per problem, worst first; none when all is well.
pub fn problems(
    peers: &[PeerHealth],
    shares: &[ShareHealth],
    tunnels: &[TunnelHealth],
    trust: &TrustHealth,
    now: Millis,
) -> Vec<Problem> {
    let mut out = Vec::new();
    trust_problems(trust, now, &mut out);
    for t in tunnels {
        let detail = t
            .detail
            .as_deref()
            .map(|d| shorten(d, 160))
            .unwrap_or_default();
        let line = match t.state.as_str() {
            "auth-failed" => format!(
                "⚠ tunnel {} stopped: ssh was refused, and retrying cannot help — {detail}",
                t.tunnel
            ),
            "healing" => format!("⚠ tunnel {} down, reconnecting — {detail}", t.tunnel),
            _ => continue,
        };
        out.push(Problem {
            severity: Severity::Degraded,
            line,
        });
    }
    for p in peers {
        let severity = if p.overdue {
            Severity::Down
        } else {
            Severity::Degraded
        };
        let waiting = match p.waiting_memories {
            Some(0) | None => String::new(),
            Some(1) => " — 1 memory not backed up".to_owned(),
            Some(n) => format!(" — {n} memories not backed up"),
        };
        let why = match (&p.last_error_class, &p.last_error) {
            (Some(class), Some(msg)) if p.consecutive_failures > 0 => {
                format!(" ({class}: {})", shorten(msg, 120))
            }
            _ => String::new(),
        };
        let line = match p.state {
            PeerState::Ok => continue,
            PeerState::AuthFailed => format!(
                "⚠ sync to {} stopped: the peer refused this node{} — pair again with a new invite{why}",
                p.peer,
                if p.overdue {
                    format!(", {} without a sync", span(p.silent_ms))
                } else {
                    String::new()
                },
            ),
            PeerState::Down if p.last_success_at.is_none() => format!(
                "⚠ sync to {} down: never synced in {}{waiting}{why}",
                p.peer,
                span(p.silent_ms)
            ),
            PeerState::Down => format!(
                "⚠ sync to {} down {}{waiting}{why}",
                p.peer,
                span(p.silent_ms)
            ),
            PeerState::Healing => format!(
                "⚠ sync to {} failing ({} in a row, {}), retrying{waiting}{why}",
                p.peer,
                p.consecutive_failures,
                match p.last_success_at {
                    Some(_) => format!("last success {} ago", span(p.silent_ms)),
                    None => "never synced yet".to_owned(),
                }
            ),
            PeerState::NeverSynced => format!(
                "⚠ {} has never synced: run `selves sync {}` or start the daemon{waiting}",
                p.peer, p.peer
            ),
        };
        out.push(Problem { severity, line });
    }
    for s in shares {
        if let Some((why, since)) = &s.stopped {
            out.push(Problem {
                severity: Severity::Degraded,
                line: format!(
                    "⚠ share {} stopped {} ago — {}",
                    s.share,
                    span(now - since),
                    shorten(why, 160)
                ),
            });
        }
        let mut parts = Vec::new();
        match s.conflicts {
            0 => {}
            1 => parts.push("1 conflict copy".to_owned()),
            n => parts.push(format!("{n} conflict copies")),
        }
        match s.held {
            0 => {}
            1 => parts.push("1 file held back".to_owned()),
            n => parts.push(format!("{n} files held back")),
        }
        if !parts.is_empty() {
            out.push(Problem {
                severity: Severity::Degraded,
                line: format!(
                    "⚠ share {}: {} — see `selves conflicts`",
                    s.share,
                    parts.join(", ")
                ),
            });
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.severity));
    out
}

/// `6 days`, `3 hours`, `12 min`, `40 s`: the largest unit that fits.
pub fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => plural(s / 3600, "hour"),
        _ => plural(s / 86_400, "day"),
    }
}

fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    const NOW: i64 = 100 * DAY;

    fn remote() -> Remote {
        Remote {
            alias: "vps".parse().unwrap(),
            url: "https://127.0.0.1:1".into(),
            protocol: Protocol::Selves,
            pulled_to: 0,
            pushed_to: 0,
            token: selves_wire::Token::from_bytes([7; 32]),
            cert_fp: None,
            insecure: true,
            node_id: None,
            node_name: None,
            added_at: NOW - 30 * DAY,
            last_attempt_at: None,
            last_success_at: None,
            consecutive_failures: 0,
            last_error: None,
            last_error_class: None,
            down_after_ms: None,
            joined_at: None,
            every_ms: None,
        }
    }

    fn failing(mut r: Remote, class: &str, n: u32) -> Remote {
        r.consecutive_failures = n;
        r.last_error_class = Some(class.into());
        r.last_error = Some(format!("{class} trouble"));
        r.last_attempt_at = Some(NOW);
        r
    }

    #[test]
    fn a_peer_that_synced_just_now_is_ok_and_silent() {
        let mut r = remote();
        r.last_success_at = Some(NOW - 1000);
        let h = assess(&r, 0, NOW);
        assert_eq!(h.state, PeerState::Ok);
        assert!(problems(&[h], &[], &[], &TrustHealth::default(), NOW).is_empty());
    }

    #[test]
    fn a_fresh_failure_is_healing_and_already_worth_a_line() {
        let mut r = failing(remote(), "network", 2);
        r.last_success_at = Some(NOW - 5 * 60_000);
        let h = assess(&r, 3, NOW);
        assert_eq!(h.state, PeerState::Healing);
        let p = problems(&[h], &[], &[], &TrustHealth::default(), NOW);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].severity, Severity::Degraded);
        assert_eq!(
            p[0].line,
            "⚠ sync to vps failing (2 in a row, last success 5 min ago), retrying — 3 memories not backed up (network: network trouble)"
        );
    }

    #[test]
    fn a_failing_peer_that_never_synced_does_not_claim_a_last_success() {
        let mut r = failing(remote(), "network", 1);
        r.added_at = NOW - 60_000;
        let h = assess(&r, 0, NOW);
        assert_eq!(h.state, PeerState::Healing);
        assert_eq!(
            problems(&[h], &[], &[], &TrustHealth::default(), NOW)[0].line,
            "⚠ sync to vps failing (1 in a row, never synced yet), retrying (network: network trouble)"
        );
    }

    #[test]
    fn six_days_without_a_success_is_down_with_what_waits() {
        let mut r = failing(remote(), "network", 400);
        r.last_success_at = Some(NOW - 6 * DAY - HOUR);
        let h = assess(&r, 125, NOW);
        assert_eq!(h.state, PeerState::Down);
        let p = problems(&[h], &[], &[], &TrustHealth::default(), NOW);
        assert_eq!(p[0].severity, Severity::Down);
        assert!(
            p[0].line
                .starts_with("⚠ sync to vps down 6 days — 125 memories not backed up"),
            "{}",
            p[0].line
        );
    }

    #[test]
    fn the_threshold_is_per_peer() {
        let mut r = remote();
        r.last_success_at = Some(NOW - 11 * 60_000);
        assert_eq!(
            assess(&r, 0, NOW).state,
            PeerState::Ok,
            "no failure, within an hour"
        );
        r.down_after_ms = Some(10 * 60_000);
        let h = assess(&r, 1, NOW);
        assert_eq!(h.state, PeerState::Down);
        assert_eq!(
            problems(&[h], &[], &[], &TrustHealth::default(), NOW)[0].line,
            "⚠ sync to vps down 11 min — 1 memory not backed up"
        );
    }

    #[test]
    fn a_refused_token_stops_and_says_to_re_pair() {
        let mut r = failing(remote(), "auth", 1);
        r.last_success_at = Some(NOW - 60_000);
        let h = assess(&r, 0, NOW);
        assert_eq!(h.state, PeerState::AuthFailed);
        let p = problems(&[h], &[], &[], &TrustHealth::default(), NOW);
        assert_eq!(p[0].severity, Severity::Degraded);
        assert!(p[0].line.contains("pair again"), "{}", p[0].line);
    }

    #[test]
    fn never_synced_is_a_line_then_down_past_the_threshold() {
        let mut r = remote();
        r.added_at = NOW - 60_000;
        let h = assess(&r, 7, NOW);
        assert_eq!(h.state, PeerState::NeverSynced);
        assert_eq!(
            problems(&[h], &[], &[], &TrustHealth::default(), NOW)[0].severity,
            Severity::Degraded
        );
        r.added_at = NOW - 2 * DAY;
        let h = assess(&r, 7, NOW);
        assert_eq!(h.state, PeerState::Down);
        assert_eq!(
            problems(&[h], &[], &[], &TrustHealth::default(), NOW)[0].line,
            "⚠ sync to vps down: never synced in 2 days — 7 memories not backed up"
        );
    }

    #[test]
    fn memex_peers_have_no_waiting_count() {
        let mut r = remote();
        r.protocol = Protocol::Memex;
        r.last_success_at = Some(NOW - 2 * HOUR);
        let h = assess(&r, 9, NOW);
        assert_eq!(h.waiting_memories, None);
        assert_eq!(
            problems(&[h], &[], &[], &TrustHealth::default(), NOW)[0].line,
            "⚠ sync to vps down 2 hours"
        );
    }

    #[test]
    fn shares_with_conflicts_or_held_files_get_a_line_and_down_sorts_first() {
        let mut r = remote();
        r.last_success_at = Some(NOW - 2 * DAY);
        let shares = [
            ShareHealth {
                share: "knowledge".into(),
                conflicts: 2,
                held: 1,
                stopped: None,
            },
            ShareHealth {
                share: "quiet".into(),
                conflicts: 0,
                held: 0,
                stopped: None,
            },
        ];
        let p = problems(
            &[assess(&r, 0, NOW)],
            &shares,
            &[],
            &TrustHealth::default(),
            NOW,
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].severity, Severity::Down);
        assert_eq!(
            p[1].line,
            "⚠ share knowledge: 2 conflict copies, 1 file held back — see `selves conflicts`"
        );
    }

    #[test]
    fn spans_use_the_largest_unit() {
        assert_eq!(span(999), "0 s");
        assert_eq!(span(59_000), "59 s");
        assert_eq!(span(60_000), "1 min");
        assert_eq!(span(HOUR), "1 hour");
        assert_eq!(span(3 * HOUR + 1), "3 hours");
        assert_eq!(span(DAY), "1 day");
        assert_eq!(span(6 * DAY + 23 * HOUR), "6 days");
    }

    #[test]
    fn trust_problems_are_loud() {
        let trust = TrustHealth {
            clash: Some("a peer holds other records memory 7 signed with this node's key".into()),
            forks: vec![selves_store::Fork {
                node: "0123456789abcdef0123456789ab5e1f".parse().unwrap(),
                name: Some("laptop".into()),
                stream: "memory".parse().unwrap(),
                seq: 7,
                peer: "hub".into(),
                seen_at: NOW,
            }],
            refusals: vec![selves_store::RefusalCount {
                peer: "phone".into(),
                kind: "forged".into(),
                count: 3,
                last_at: NOW - 1000,
                last_reason: "signed with key 1234, which is not the key of node x".into(),
                node: "0123456789abcdef0123456789ab5e1f".into(),
            }],
            daemon_died_at: None,
            quiet_callers: Vec::new(),
            login_failures: Vec::new(),
            disk_full: None,
            // Old refusals fade.
            token_claims: vec![(
                "laptop".into(),
                "ffff".into(),
                Some("10.1.1.1".into()),
                NOW - 8 * DAY,
            )],
        };
        let p = problems(&[], &[], &[], &trust, NOW);
        let lines: Vec<&str> = p.iter().map(|p| p.line.as_str()).collect();
        expect_test::expect![[r#"
            [
                "⚠ this node's key is in two homes (a peer holds other records memory 7 signed with this node's key) — run `selves init --new-identity` in the copy",
                "⚠ node laptop has two signed versions of its memory records from 7 on (the second from hub): its key is in two homes — run `selves init --new-identity` in the copy",
                "⚠ 3 batches refused from phone (records not written by the node they claim, node 01234567, last 1 s ago): signed with key 1234, which is not the key of node x",
            ]
        "#]]
        .assert_debug_eq(&lines);
        assert_eq!(p[0].severity, Severity::Down);
        assert_eq!(p[2].severity, Severity::Degraded);
    }
}
