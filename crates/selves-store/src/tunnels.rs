//! SSH tunnels the daemon keeps (`selves tunnel add`), with the state its
//! keeper last recorded, for `selves status`.

use rusqlite::params;
use serde::Serialize;

use crate::{Millis, Result, Store};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tunnel {
    /// Usually the peer it carries.
    pub name: String,
    /// `user@host` or `user@host:port`.
    pub ssh: String,
    /// `forward` (`-L local:remote`: this node dials the peer through it)
    /// or `reverse` (`-R remote:local`: the peer dials this node).
    pub kind: String,
    pub local_port: u16,
    pub remote_port: u16,
    pub identity: Option<String>,
    pub added_at: Millis,
    /// `stopped`, `starting`, `up`, `healing`, `auth-failed`.
    pub state: String,
    pub detail: Option<String>,
    pub since: Option<Millis>,
    /// ssh processes started so far.
    pub spawns: u64,
}

impl Tunnel {
    /// A tunnel as configured, its keeper not yet started.
    pub fn new(
        name: String,
        ssh: String,
        kind: &str,
        (local_port, remote_port): (u16, u16),
        identity: Option<String>,
        added_at: Millis,
    ) -> Tunnel {
        Tunnel {
            name,
            ssh,
            kind: kind.to_owned(),
            local_port,
            remote_port,
            identity,
            added_at,
            state: "stopped".into(),
            detail: None,
            since: None,
            spawns: 0,
        }
    }
}

impl Store {
    /// Adds or replaces a tunnel (its state starts afresh).
    pub fn put_tunnel(&self, t: &Tunnel) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO tunnels
                   (name, ssh, kind, local_port, remote_port, identity, added_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    t.name,
                    t.ssh,
                    t.kind,
                    t.local_port,
                    t.remote_port,
                    t.identity,
                    t.added_at
                ],
            )?;
            Ok(())
        })
    }

    pub fn remove_tunnel(&self, name: &str) -> Result<bool> {
        self.write(|tx| Ok(tx.execute("DELETE FROM tunnels WHERE name = ?1", [name])? > 0))
    }

    pub fn tunnels(&self) -> Result<Vec<Tunnel>> {
        let r = self.reader()?;
        let mut stmt = r.prepare(
            "SELECT name, ssh, kind, local_port, remote_port, identity, added_at, state,
                    detail, since, spawns
             FROM tunnels ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Tunnel {
                name: r.get(0)?,
                ssh: r.get(1)?,
                kind: r.get(2)?,
                local_port: r.get(3)?,
                remote_port: r.get(4)?,
                identity: r.get(5)?,
                added_at: r.get(6)?,
                state: r.get(7)?,
                detail: r.get(8)?,
                since: r.get(9)?,
                spawns: r.get::<_, i64>(10)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records what the keeper sees; `since` moves only when the state
    /// changes. `spawned` counts one more ssh process.
    pub fn tunnel_state(
        &self,
        name: &str,
        state: &str,
        detail: Option<&str>,
        spawned: bool,
        now: Millis,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE tunnels SET
                   since = CASE WHEN state = ?2 AND since IS NOT NULL THEN since ELSE ?4 END,
                   state = ?2, detail = ?3, spawns = spawns + ?5
                 WHERE name = ?1",
                params![name, state, detail, now, i64::from(spawned)],
            )?;
            Ok(())
        })
    }
}
