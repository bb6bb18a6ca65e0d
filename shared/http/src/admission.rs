//! Which connections a listener keeps: at most `max_connections` in all and
//! `max_connections_per_client` from one address. Synchronous and clock-free, so the rule is
//! tested without sockets; the serving loop asks before it spends anything on a connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The counters of one listener.
#[derive(Debug)]
pub(crate) struct Admission {
    max_total: usize,
    max_per_client: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    /// Only addresses with a connection open: at most `max_total` entries.
    per_client: HashMap<IpAddr, usize>,
}

/// Why a connection was closed on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The listener holds `max_connections`.
    Total,
    /// This address holds `max_connections_per_client`.
    PerClient,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Permit {
    admission: Arc<Admission>,
    client: IpAddr,
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_client,
            state: Mutex::default(),
        })
    }

    /// Admits a connection from `client`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Permit, Refused> {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d: count it as a.b.c.d.
        let client = client.to_canonical();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.total >= self.max_total {
            return Err(Refused::Total);
        }
        let held = state.per_client.entry(client).or_insert(0);
        if *held >= self.max_per_client {
            return Err(Refused::PerClient);
        }
        *held += 1;
        state.total += 1;
        Ok(Permit {
            admission: Arc::clone(self),
            client,
        })
    }

    /// Connections held now.
    pub(crate) fn held(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self
            .admission
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.total = state.total.saturating_sub(1);
        if let Some(held) = state.per_client.get_mut(&self.client) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                state.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_client_then_total() {
        let a = Admission::new(5, 2);
        let p1 = a.admit(ip("10.0.0.1")).unwrap();
        let _p2 = a.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refused::PerClient);
        let _others: Vec<_> = ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
            .iter()
            .map(|c| a.admit(ip(c)).unwrap())
            .collect();
        assert_eq!(a.held(), 5);
        assert_eq!(a.admit(ip("10.0.0.9")).unwrap_err(), Refused::Total);
        drop(p1);
        assert_eq!(a.held(), 4);
        let _p = a.admit(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn the_table_forgets_clients_that_left() {
        let a = Admission::new(10, 10);
        for i in 0..100u8 {
            drop(a.admit(IpAddr::from([10, 0, 1, i])).unwrap());
        }
        assert_eq!(a.held(), 0);
        assert!(a.state.lock().unwrap().per_client.is_empty());
    }
}
