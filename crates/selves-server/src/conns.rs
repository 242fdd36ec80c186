//! Who holds the server's connections. Each address may hold only a few,
//! and a quarter of them all is kept for addresses that proved a token
//! lately, so strangers opening sockets (idle TCP, TLS with no request,
//! slow bodies) cannot lock the node's own peers out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an address stays known after its last good token.
const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);

pub(crate) struct Conns {
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    total: usize,
    strangers: usize,
    by_addr: HashMap<IpAddr, usize>,
    known: HashMap<IpAddr, Instant>,
}

/// One admitted connection; dropping it frees its place.
pub(crate) struct Slot {
    conns: Arc<Conns>,
    ip: IpAddr,
    stranger: bool,
}

impl Slot {
    /// Whether the address had not proved a token lately when it came.
    pub(crate) fn stranger(&self) -> bool {
        self.stranger
    }
}

impl Conns {
    pub(crate) fn new(max: usize) -> Arc<Conns> {
        Arc::new(Conns {
            max: max.max(1),
            inner: Mutex::default(),
        })
    }

    /// Room kept for known addresses, and the most one address may hold.
    fn caps(&self) -> (usize, usize, usize) {
        let reserved = self.max / 4;
        let per_known = (self.max / 4).max(1);
        let per_stranger = (self.max / 16).max(1);
        (reserved, per_known, per_stranger)
    }

    /// A place for a connection from `ip`, or `None` (refused: close it).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let (reserved, per_known, per_stranger) = self.caps();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let stranger = inner
            .known
            .get(&ip)
            .is_none_or(|at| at.elapsed() > KNOWN_FOR);
        let here = inner.by_addr.get(&ip).copied().unwrap_or(0);
        let full = inner.total >= self.max
            || here >= if stranger { per_stranger } else { per_known }
            || (stranger && inner.strangers >= self.max - reserved);
        if full {
            return None;
        }
        inner.total += 1;
        inner.strangers += usize::from(stranger);
        *inner.by_addr.entry(ip).or_default() += 1;
        Some(Slot {
            conns: self.clone(),
            ip,
            stranger,
        })
    }

    /// `ip` just proved a token: its next connections use the room kept.
    pub(crate) fn known(&self, ip: IpAddr) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.known.len() > 4096 {
            inner.known.retain(|_, at| at.elapsed() < KNOWN_FOR);
        }
        inner.known.insert(ip, Instant::now());
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.conns.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.total -= 1;
        inner.strangers -= usize::from(self.stranger);
        if let Some(n) = inner.by_addr.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                inner.by_addr.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strangers_are_capped_per_address_and_known_peers_keep_room() {
        let conns = Conns::new(64);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let peer: IpAddr = "192.0.2.99".parse().unwrap();
        let mut held: Vec<Slot> = (0..4).map(|_| conns.admit(a).unwrap()).collect();
        assert!(conns.admit(a).is_none(), "4 per stranger address");
        // Strangers from many addresses fill their share, not the room kept.
        for i in 2..14u8 {
            let ip: IpAddr = format!("192.0.2.{i}").parse().unwrap();
            while let Some(s) = conns.admit(ip) {
                held.push(s);
            }
        }
        assert_eq!(held.len(), 48);
        assert!(conns.admit(peer).is_none(), "a stranger finds no room");
        conns.known(peer);
        let mine: Vec<Slot> = (0..16).map(|_| conns.admit(peer).unwrap()).collect();
        assert!(conns.admit(peer).is_none(), "the whole server is full");
        assert!(mine.iter().all(|s| !s.stranger()));
        drop(mine);
        drop(held);
        assert!(conns.admit(a).is_some(), "places are given back");
    }
}
