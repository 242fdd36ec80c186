//! Peers: the tokens this node has minted (who may call it; only digests
//! are stored) and the remotes it dials (which hold the token they send).

use rusqlite::{OptionalExtension, params};
use selves_wire::{CertFingerprint, Name, NodeId, StreamName, Token};
use subtle::ConstantTimeEq as _;

use crate::{Millis, Result, Store, StoreError};

/// A token grant, as `peer list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenGrant {
    pub peer: String,
    pub created_at: Millis,
    /// Set while the invite is unused: the token must be used before this.
    pub claim_by: Option<Millis>,
    pub claimed_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
    pub last_seen_at: Option<Millis>,
    pub invite_host: Option<String>,
    pub invite_port: Option<u16>,
    /// The node the token is bound to: the first to prove its key with it.
    pub node_id: Option<NodeId>,
    /// Whether the token is bound to that node's key (a token claimed
    /// before keys existed is bound at its next hello).
    pub bound: bool,
    /// The address the token was last used from.
    pub last_addr: Option<String>,
    /// Nodes refused because the token is bound to another: (node, address, when).
    pub refused: Vec<(String, Option<String>, Millis)>,
    /// After how long without a call the peer counts as down (`None`: an hour).
    pub down_after_ms: Option<i64>,
}

impl TokenGrant {
    pub fn state(&self, now: Millis) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.claim_by.is_some_and(|by| now > by) {
            "expired"
        } else if self.claim_by.is_some() {
            "invited"
        } else {
            "active"
        }
    }
}

/// What a presented token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    Ok(Name),
    Unknown,
    Revoked(String),
    /// An invite that was never used in time.
    Expired(String),
}

/// Requests with unknown tokens from one address (over the last hour of
/// them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoginFailures {
    pub addr: String,
    pub count: u64,
    pub first_at: Millis,
    pub last_at: Millis,
    /// When the address was last throttled.
    pub throttled_at: Option<Millis>,
}

/// What claiming a token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The token is (now) bound to the caller.
    Bound,
    /// Another node holds it (its id, or who).
    Taken(String),
    /// An invite that was never claimed in time.
    Expired,
}

/// What a remote speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The native protocol (docs/protocol.md).
    Selves,
    /// memex v12 (`/sync/*`), with cursors kept here.
    Memex,
    /// A remote medium: a git repository or a carried folder, holding
    /// sealed segments (`selves_client::remote`); the key is the token.
    Medium,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Selves => "selves",
            Protocol::Memex => "memex",
            Protocol::Medium => "medium",
        }
    }
}

/// A peer this node dials.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Remote {
    pub alias: Name,
    pub url: String,
    pub protocol: Protocol,
    /// memex only: the peer's id of the last row pulled from it.
    pub pulled_to: i64,
    /// memex only: this node's arrival number of the last row pushed to it.
    pub pushed_to: i64,
    #[serde(skip)]
    pub token: Token,
    /// `None` only with `insecure`.
    pub cert_fp: Option<CertFingerprint>,
    pub insecure: bool,
    pub node_id: Option<NodeId>,
    pub node_name: Option<String>,
    pub added_at: Millis,
    pub last_attempt_at: Option<Millis>,
    pub last_success_at: Option<Millis>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_error_class: Option<String>,
    /// No success for this long and the remote counts as down (`None`:
    /// the default, an hour).
    pub down_after_ms: Option<i64>,
    /// When `selves join` finished with this remote (its self-test passed).
    pub joined_at: Option<Millis>,
    /// A remote medium's own schedule (`remote add --every`): the daemon
    /// fetches it this often, and pushes to a git one at most this often.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<i64>,
}

/// How a sync attempt with a remote ended, for status.
#[derive(Debug, Clone)]
pub enum Attempt {
    Success {
        /// A selves peer's identity (memex nodes have none).
        node_id: Option<NodeId>,
        node_name: Option<String>,
        /// The memory heads the peer holds after the round (none for memex
        /// peers).
        heads: Vec<selves_wire::native::Head>,
    },
    Failure {
        class: String,
        message: String,
    },
}

impl Store {
    /// Mints (or re-mints) the token for `peer`. An unused or revoked grant
    /// is replaced; one in use is refused unless `rotate` (which replaces it,
    /// cutting off the old token at once). The new token must be used before
    /// `claim_by`.
    #[allow(clippy::too_many_arguments)]
    pub fn mint_token(
        &self,
        peer: &Name,
        token: &Token,
        claim_by: Millis,
        host: &str,
        port: u16,
        rotate: bool,
        now: Millis,
    ) -> Result<()> {
        self.write(|tx| {
            let existing: Option<(Option<Millis>, Option<Millis>)> = tx
                .query_row(
                    "SELECT claim_by, revoked_at FROM tokens WHERE peer = ?1",
                    [peer.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((claim_by, revoked_at)) = existing {
                let in_use = claim_by.is_none() && revoked_at.is_none();
                if in_use && !rotate {
                    return Err(StoreError::TokenInUse(peer.clone()));
                }
            } else if rotate {
                return Err(StoreError::NoSuchPeer(peer.to_string()));
            }
            tx.execute(
                "INSERT INTO tokens (peer, digest, created_at, claim_by, invite_host, invite_port)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (peer) DO UPDATE SET digest = excluded.digest,
                    created_at = excluded.created_at, claim_by = excluded.claim_by,
                    claimed_at = NULL, revoked_at = NULL, last_seen_at = NULL,
                    node_id = NULL, node_key = NULL, last_addr = NULL,
                    invite_host = excluded.invite_host, invite_port = excluded.invite_port",
                params![
                    peer.as_str(),
                    &token.digest()[..],
                    now,
                    claim_by,
                    host,
                    port
                ],
            )?;
            tx.execute("DELETE FROM token_claims WHERE peer = ?1", [peer.as_str()])?;
            Ok(())
        })
    }

    /// Checks a presented token against every grant in constant time. An
    /// invited token that was never claimed is worth nothing past its
    /// deadline, in any form; claiming is [`Store::claim_token`]'s.
    pub fn authenticate(&self, token: &Token, now: Millis) -> Result<AuthOutcome> {
        let digest = token.digest();
        let matched = {
            let r = self.reader()?;
            let mut stmt =
                r.prepare_cached("SELECT peer, digest, claim_by, revoked_at FROM tokens")?;
            let mut rows = stmt.query([])?;
            let mut matched: Option<(String, Option<Millis>, Option<Millis>)> = None;
            while let Some(row) = rows.next()? {
                let stored = row.get_ref(1)?.as_blob()?;
                // Every grant is compared, whatever matched before.
                if bool::from(stored.ct_eq(&digest[..])) {
                    matched = Some((row.get(0)?, row.get(2)?, row.get(3)?));
                }
            }
            matched
        };
        let Some((peer, claim_by, revoked_at)) = matched else {
            return Ok(AuthOutcome::Unknown);
        };
        if revoked_at.is_some() {
            return Ok(AuthOutcome::Revoked(peer));
        }
        if claim_by.is_some_and(|by| now > by) {
            return Ok(AuthOutcome::Expired(peer));
        }
        match peer.parse() {
            Ok(name) => Ok(AuthOutcome::Ok(name)),
            Err(_) => Ok(AuthOutcome::Unknown),
        }
    }

    /// Notes that `peer` was seen now, from `addr`.
    pub fn touch_token(&self, peer: &Name, addr: Option<&str>, now: Millis) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE tokens SET last_seen_at = ?2, last_addr = COALESCE(?3, last_addr)
                 WHERE peer = ?1",
                params![peer.as_str(), now, addr],
            )?;
            Ok(())
        })
    }

    /// The node and key `peer`'s token is bound to, if it is.
    pub fn token_binding(
        &self,
        peer: &Name,
    ) -> Result<Option<(NodeId, selves_wire::sign::PublicKey)>> {
        let r = self.reader()?;
        let found: Option<(Option<String>, Option<Vec<u8>>)> = r
            .prepare_cached("SELECT node_id, node_key FROM tokens WHERE peer = ?1")?
            .query_row([peer.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(match found {
            Some((Some(node), Some(key))) if key.len() == 32 => node.parse().ok().map(|n| {
                (
                    n,
                    selves_wire::sign::PublicKey(crate::unhex_blob::<32>(key)),
                )
            }),
            _ => None,
        })
    }

    /// Claims `peer`'s token for node `node` with `key` (which the caller
    /// proved it holds). The first claim binds the token for good: a
    /// second node presenting it is refused and noted with its address.
    /// An invite not claimed before its deadline can no longer be.
    pub fn claim_token(
        &self,
        peer: &Name,
        node: &NodeId,
        key: &selves_wire::sign::PublicKey,
        addr: Option<&str>,
        now: Millis,
    ) -> Result<Claim> {
        self.write(|tx| {
            let (claim_by, bound_node, bound_key, memex): (
                Option<Millis>,
                Option<String>,
                Option<Vec<u8>>,
                bool,
            ) = tx.query_row(
                "SELECT claim_by, node_id, node_key,
                        node_key IS NULL AND claimed_at IS NOT NULL AND node_id = 'memex'
                 FROM tokens WHERE peer = ?1",
                [peer.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            let refuse = |reason: &str| -> Result<()> {
                tx.execute(
                    "INSERT INTO token_claims (peer, node_id, addr, at, reason)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (peer, node_id) DO UPDATE SET addr = excluded.addr,
                        at = excluded.at, reason = excluded.reason",
                    params![peer.as_str(), node.as_str(), addr, now, reason],
                )?;
                Ok(())
            };
            if let Some(bound) = bound_key {
                if bound[..] == key.0[..] && bound_node.as_deref() == Some(node.as_str()) {
                    return Ok(Claim::Bound);
                }
                refuse("the token is bound to another node")?;
                return Ok(Claim::Taken(bound_node.unwrap_or_default()));
            }
            if memex {
                refuse("the token belongs to a memex peer")?;
                return Ok(Claim::Taken("a memex peer".into()));
            }
            if claim_by.is_some_and(|by| now > by) {
                refuse("the invite expired before it was used")?;
                return Ok(Claim::Expired);
            }
            // A token claimed before keys existed was used by the node its
            // hellos named: only that node may bind it now.
            if let Some(noted) = bound_node.as_deref()
                && noted != node.as_str()
            {
                refuse("the token is used by another node")?;
                return Ok(Claim::Taken(noted.to_owned()));
            }
            tx.execute(
                "UPDATE tokens SET claim_by = NULL, claimed_at = COALESCE(claimed_at, ?2),
                    node_id = ?3, node_key = ?4 WHERE peer = ?1",
                params![peer.as_str(), now, node.as_str(), &key.0[..]],
            )?;
            Ok(Claim::Bound)
        })
    }

    /// Claims `peer`'s token for a memex peer (which has no key): only an
    /// unbound token, and for good.
    pub fn claim_memex_token(&self, peer: &Name, now: Millis) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE tokens SET claim_by = NULL, claimed_at = COALESCE(claimed_at, ?2),
                    node_id = 'memex'
                 WHERE peer = ?1 AND node_key IS NULL AND (node_id IS NULL OR node_id = 'memex'
                    OR claimed_at IS NULL)",
                params![peer.as_str(), now],
            )?;
            Ok(n > 0)
        })
    }

    /// Adds `n` requests refused for an unknown token from `addr` (a count
    /// that starts over after an hour without any), noting whether the
    /// address is being throttled.
    pub fn note_login_failures(
        &self,
        addr: &str,
        n: u64,
        throttled: bool,
        now: Millis,
    ) -> Result<()> {
        const HOUR: Millis = 3600 * 1000;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO login_failures (addr, count, first_at, last_at, throttled_at)
                 VALUES (?1, ?2, ?3, ?3, CASE WHEN ?4 THEN ?3 END)
                 ON CONFLICT (addr) DO UPDATE SET
                    count = CASE WHEN ?3 - last_at > ?5 THEN excluded.count ELSE count + excluded.count END,
                    first_at = CASE WHEN ?3 - last_at > ?5 THEN excluded.first_at ELSE first_at END,
                    last_at = excluded.last_at,
                    throttled_at = COALESCE(excluded.throttled_at, throttled_at)",
                params![addr, n as i64, now, throttled, HOUR],
            )?;
            Ok(())
        })
    }

    /// Addresses that presented unknown tokens, the latest first.
    pub fn login_failures(&self) -> Result<Vec<LoginFailures>> {
        let r = self.reader()?;
        let mut stmt = r.prepare(
            "SELECT addr, count, first_at, last_at, throttled_at FROM login_failures ORDER BY last_at DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(LoginFailures {
                addr: r.get(0)?,
                count: r.get::<_, i64>(1)? as u64,
                first_at: r.get(2)?,
                last_at: r.get(3)?,
                throttled_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes `peer`'s token alone. Returns false if there is none.
    pub fn revoke_token(&self, peer: &str, now: Millis) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE peer = ?1 AND revoked_at IS NULL",
                params![peer, now],
            )?;
            Ok(n > 0)
        })
    }

    pub fn token_grants(&self) -> Result<Vec<TokenGrant>> {
        let r = self.reader()?;
        let mut stmt = r.prepare(
            "SELECT peer, created_at, claim_by, claimed_at, revoked_at, last_seen_at,
                    invite_host, invite_port, node_id, node_key IS NOT NULL, last_addr,
                    down_after_ms
             FROM tokens ORDER BY peer",
        )?;
        let mut claims =
            r.prepare("SELECT node_id, addr, at FROM token_claims WHERE peer = ?1 ORDER BY at")?;
        let rows = stmt.query_map([], |r| {
            Ok(TokenGrant {
                peer: r.get(0)?,
                created_at: r.get(1)?,
                claim_by: r.get(2)?,
                claimed_at: r.get(3)?,
                revoked_at: r.get(4)?,
                last_seen_at: r.get(5)?,
                invite_host: r.get(6)?,
                invite_port: r.get(7)?,
                node_id: r.get::<_, Option<String>>(8)?.and_then(|n| n.parse().ok()),
                bound: r.get(9)?,
                last_addr: r.get(10)?,
                refused: Vec::new(),
                down_after_ms: r.get(11)?,
            })
        })?;
        let mut grants: Vec<TokenGrant> = rows.collect::<rusqlite::Result<_>>()?;
        for g in &mut grants {
            g.refused = claims
                .query_map([&g.peer], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
        }
        Ok(grants)
    }

    /// Adds a remote; `replace` overwrites one of the same alias.
    pub fn add_remote(&self, remote: &Remote, replace: bool) -> Result<()> {
        self.write(|tx| {
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM remotes WHERE alias = ?1)",
                [remote.alias.as_str()],
                |r| r.get(0),
            )?;
            if exists && !replace {
                return Err(StoreError::RemoteExists(remote.alias.clone()));
            }
            // A re-paired alias may be another node: forget what it held.
            tx.execute(
                "DELETE FROM remote_heads WHERE alias = ?1",
                [remote.alias.as_str()],
            )?;
            tx.execute(
                "DELETE FROM remote_cursors WHERE alias = ?1",
                [remote.alias.as_str()],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO remotes (alias, url, token, cert_fp, insecure, node_id,
                    node_name, added_at, protocol, pulled_to, pushed_to)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    remote.alias.as_str(),
                    remote.url,
                    remote.token.to_hex(),
                    remote.cert_fp.map(|f| f.to_string()),
                    remote.insecure,
                    remote.node_id.as_ref().map(NodeId::as_str),
                    remote.node_name,
                    remote.added_at,
                    remote.protocol.as_str(),
                    remote.pulled_to,
                    remote.pushed_to,
                ],
            )?;
            Ok(())
        })
    }

    pub fn remote(&self, alias: &str) -> Result<Option<Remote>> {
        Ok(self
            .remotes()?
            .into_iter()
            .find(|r| r.alias.as_str() == alias))
    }

    pub fn remotes(&self) -> Result<Vec<Remote>> {
        let r = self.reader()?;
        let mut stmt = r.prepare(
            "SELECT alias, url, token, cert_fp, insecure, node_id, node_name, added_at,
                    last_attempt_at, last_success_at, consecutive_failures, last_error,
                    last_error_class, protocol, pulled_to, pushed_to, down_after_ms, joined_at,
                    every_ms
             FROM remotes ORDER BY alias",
        )?;
        let rows = stmt.query_map([], |r| {
            // Rows were validated when written; one that no longer parses is
            // skipped rather than failing every command.
            let alias = r.get::<_, String>(0)?.parse().ok();
            let token = r.get::<_, String>(2)?.parse().ok();
            let (Some(alias), Some(token)) = (alias, token) else {
                return Ok(None);
            };
            Ok(Some(Remote {
                alias,
                url: r.get(1)?,
                protocol: match r.get::<_, String>(13)?.as_str() {
                    "memex" => Protocol::Memex,
                    "medium" => Protocol::Medium,
                    _ => Protocol::Selves,
                },
                pulled_to: r.get(14)?,
                pushed_to: r.get(15)?,
                token,
                cert_fp: r.get::<_, Option<String>>(3)?.and_then(|f| f.parse().ok()),
                insecure: r.get(4)?,
                node_id: r.get::<_, Option<String>>(5)?.and_then(|n| n.parse().ok()),
                node_name: r.get(6)?,
                added_at: r.get(7)?,
                last_attempt_at: r.get(8)?,
                last_success_at: r.get(9)?,
                consecutive_failures: r.get(10)?,
                last_error: r.get(11)?,
                last_error_class: r.get(12)?,
                down_after_ms: r.get(16)?,
                joined_at: r.get(17)?,
                every_ms: r.get(18)?,
            }))
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(row?);
        }
        Ok(out)
    }

    /// Notes that `selves join` finished with `alias`.
    pub fn set_joined(&self, alias: &str, at: Millis) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE remotes SET joined_at = ?2 WHERE alias = ?1",
                params![alias, at],
            )? > 0)
        })
    }

    /// Per writer of a remote (git, folder): the last segment applied here.
    pub fn remote_cursors(&self, alias: &str) -> Result<std::collections::HashMap<String, u64>> {
        let r = self.reader()?;
        let mut stmt =
            r.prepare_cached("SELECT writer, segment FROM remote_cursors WHERE alias = ?1")?;
        let rows = stmt.query_map([alias], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (w, n) = row?;
            out.insert(w, n as u64);
        }
        Ok(out)
    }

    /// [`Store::remote_cursors`], for a node that carries `carried` (the
    /// streams, joined): if it carried others when the cursors moved (a
    /// share was added since), they start over, so what was passed over is
    /// read again.
    pub fn remote_cursors_covering(
        &self,
        alias: &str,
        carried: &str,
    ) -> Result<std::collections::HashMap<String, u64>> {
        self.write(|tx| {
            let covered: Option<String> = tx
                .query_row(
                    "SELECT covered FROM remotes WHERE alias = ?1",
                    [alias],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            if covered.as_deref() != Some(carried) {
                tx.execute("DELETE FROM remote_cursors WHERE alias = ?1", [alias])?;
                tx.execute(
                    "UPDATE remotes SET covered = ?2 WHERE alias = ?1",
                    params![alias, carried],
                )?;
            }
            Ok(())
        })?;
        self.remote_cursors(alias)
    }

    /// Segment `n` of `writer` in remote `alias` is applied here (or was
    /// written by this node): the cursor moves on, and what the remote
    /// holds grows by `ends`. One transaction.
    pub fn note_remote_segment(
        &self,
        alias: &str,
        writer: &str,
        n: u64,
        ends: &[selves_wire::native::Head],
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO remote_cursors (alias, writer, segment) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO UPDATE SET segment = max(segment, excluded.segment)",
                params![alias, writer, n as i64],
            )?;
            for h in ends {
                tx.execute(
                    "INSERT INTO remote_heads (alias, node, stream, seq)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT DO UPDATE SET seq = max(seq, excluded.seq)",
                    params![alias, h.node.as_str(), h.stream.as_str(), h.seq as i64],
                )?;
            }
            Ok(())
        })
    }

    /// What a remote holds, as this node last learnt it.
    pub fn remote_heads(&self, alias: &str) -> Result<Vec<selves_wire::native::Head>> {
        let r = self.reader()?;
        let mut stmt =
            r.prepare_cached("SELECT node, stream, seq FROM remote_heads WHERE alias = ?1")?;
        let rows = stmt.query_map([alias], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (node, stream, seq) = row?;
            if let (Ok(node), Ok(stream)) = (node.parse(), stream.parse()) {
                out.push(selves_wire::native::Head::new(node, stream, seq as u64));
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn remove_remote(&self, alias: &str) -> Result<bool> {
        self.write(|tx| {
            tx.execute("DELETE FROM remote_heads WHERE alias = ?1", [alias])?;
            tx.execute("DELETE FROM remote_cursors WHERE alias = ?1", [alias])?;
            Ok(tx.execute("DELETE FROM remotes WHERE alias = ?1", [alias])? > 0)
        })
    }

    /// Records how a sync attempt with `alias` ended.
    pub fn record_attempt(&self, alias: &str, attempt: &Attempt, now: Millis) -> Result<()> {
        self.write(|tx| {
            match attempt {
                Attempt::Success {
                    node_id,
                    node_name,
                    heads,
                } => {
                    for h in heads {
                        tx.execute(
                            "INSERT INTO remote_heads (alias, node, stream, seq)
                             VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT DO UPDATE SET seq = max(seq, excluded.seq)",
                            params![alias, h.node.as_str(), h.stream.as_str(), h.seq as i64],
                        )?;
                    }
                    tx.execute(
                        "UPDATE remotes SET last_attempt_at = ?2, last_success_at = ?2,
                            consecutive_failures = 0, last_error = NULL, last_error_class = NULL,
                            node_id = COALESCE(?3, node_id), node_name = COALESCE(?4, node_name)
                         WHERE alias = ?1",
                        params![alias, now, node_id.as_ref().map(NodeId::as_str), node_name],
                    )?
                }
                Attempt::Failure { class, message } => tx.execute(
                    "UPDATE remotes SET last_attempt_at = ?2,
                        consecutive_failures = consecutive_failures + 1,
                        last_error = ?3, last_error_class = ?4
                     WHERE alias = ?1",
                    params![alias, now, message, class],
                )?,
            };
            Ok(())
        })
    }

    /// Sets a remote medium's own schedule (see [`Remote::every_ms`]).
    pub fn set_every(&self, alias: &str, ms: Option<i64>) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE remotes SET every_ms = ?2 WHERE alias = ?1",
                params![alias, ms],
            )? > 0)
        })
    }

    /// Sets after how long without a success a remote counts as down;
    /// `false` when there is no such remote.
    /// Sets after how long without a success a peer counts as down: a
    /// remote of that alias, and a peer calling in with a token of that
    /// name. Returns false if there is neither.
    pub fn set_down_after(&self, alias: &str, ms: Option<i64>) -> Result<bool> {
        self.write(|tx| {
            let remotes = tx.execute(
                "UPDATE remotes SET down_after_ms = ?2 WHERE alias = ?1",
                params![alias, ms],
            )?;
            let tokens = tx.execute(
                "UPDATE tokens SET down_after_ms = ?2 WHERE peer = ?1",
                params![alias, ms],
            )?;
            Ok(remotes + tokens > 0)
        })
    }

    /// Memory records this node holds that the remote did not, as of its
    /// last successful round (all of them before the first).
    pub fn memory_waiting(&self, alias: &str) -> Result<u64> {
        let r = self.reader()?;
        let n: i64 = r
            .prepare_cached(
                "SELECT coalesce(sum(max(h.seq - coalesce(rh.seq, 0), 0)), 0)
                 FROM heads h JOIN nodes n ON n.id = h.node JOIN streams s ON s.id = h.stream
                 LEFT JOIN remote_heads rh
                   ON rh.alias = ?1 AND rh.node = n.node_id AND rh.stream = s.name
                 WHERE s.name = ?2",
            )?
            .query_row(params![alias, StreamName::MEMORY], |r| r.get(0))?;
        Ok(n as u64)
    }
}
