//! At most `server.client_connections_per_address` connections open at once from one client
//! address, as nginx's `limit_conn` allows: a connection over the cap is closed as soon as it
//! is accepted, before it is read.
//!
//! The client timeouts bound how long each connection lasts; this bounds how many one address
//! holds, so that one machine cannot take every file descriptor. Off by default: mini-program
//! users behind a carrier's NAT share addresses, and behind a balancer that is not transparent
//! every connection comes from the balancer's address.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The connections open from each client address, and how many one may have.
#[derive(Debug)]
pub struct ConnectionCap {
    limit: u32,
    /// Only addresses with a connection open: an entry goes when its last connection does.
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl ConnectionCap {
    /// A cap of `limit` connections an address; `None` for 0, no cap.
    pub fn new(limit: u32) -> Option<Arc<Self>> {
        (limit > 0).then(|| {
            Arc::new(Self {
                limit,
                open: Mutex::new(HashMap::new()),
            })
        })
    }

    /// A slot for one more connection from `client`, held while the connection is open, or
    /// `None` when the address already has `limit` open.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Option<ConnectionSlot> {
        // An IPv4 client on a dual-stack socket is counted as the IPv4 address it is.
        let client = client.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            cap: self.clone(),
            client,
        })
    }
}

/// One admitted connection: dropping it frees its place under the cap.
#[derive(Debug)]
pub struct ConnectionSlot {
    cap: Arc<ConnectionCap>,
    client: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Entry::Occupied(mut entry) = open.entry(self.client) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_the_limit_and_a_closed_connection_frees_its_place() {
        let cap = ConnectionCap::new(2).unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let first = cap.admit(client).unwrap();
        let _second = cap.admit(client).unwrap();
        assert!(cap.admit(client).is_none());
        // Another address has its own count; the same address over IPv6-mapped IPv4 does not.
        assert!(cap.admit("203.0.113.8".parse().unwrap()).is_some());
        assert!(cap.admit("::ffff:203.0.113.7".parse().unwrap()).is_none());
        drop(first);
        assert_eq!(cap.open.lock().unwrap()[&client], 1);
        assert!(cap.admit(client).is_some());
    }

    #[test]
    fn no_cap_is_kept_for_zero_and_an_address_leaves_with_its_last_connection() {
        assert!(ConnectionCap::new(0).is_none());
        let cap = ConnectionCap::new(1).unwrap();
        let client: IpAddr = "2001:db8::1".parse().unwrap();
        drop(cap.admit(client).unwrap());
        assert!(cap.open.lock().unwrap().is_empty());
    }
}
