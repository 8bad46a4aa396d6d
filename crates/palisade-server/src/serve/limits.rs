//! Connection limits: in total and per client IP, checked once per accepted connection.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use palisade::client_ip::TrustedProxies;

const SHARDS: usize = 16;

/// Open connections, in total and per peer IP. Per-IP counts live in 16 shards, each entry
/// removed when its last connection closes, so the map never holds more entries than there
/// are open connections.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    /// Peers exempt from the per-IP limit: proxies carry many clients on few addresses.
    trusted: TrustedProxies,
    total: AtomicUsize,
    per_ip: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Total,
    PerIp,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Admitted {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut shard = self.limits.shard(ip);
            if let Some(n) = shard.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    shard.remove(&ip);
                }
            }
        }
    }
}

impl ConnectionLimits {
    pub(crate) fn new(max_total: usize, max_per_ip: usize, trusted: TrustedProxies) -> Self {
        Self {
            max_total,
            max_per_ip,
            trusted,
            total: AtomicUsize::new(0),
            per_ip: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(v4) as usize,
            // The /64 network part: one host's addresses share a shard.
            IpAddr::V6(v6) => (u128::from(v6) >> 64) as usize,
        };
        let i = (h ^ (h >> 7) ^ (h >> 17)) % SHARDS;
        self.per_ip[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `peer`, or says which limit refuses it. IPv6 peers count
    /// by their /64 (one host or subscriber gets a whole /64), IPv4-mapped ones as IPv4.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Refused> {
        let peer = match peer.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            v4 @ IpAddr::V4(_) => v4,
        };
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        let mut admitted = Admitted {
            limits: self.clone(),
            ip: None,
        };
        if self.trusted.is_trusted(peer) {
            return Ok(admitted);
        }
        let mut shard = self.shard(peer);
        let n = shard.entry(peer).or_insert(0);
        if *n >= self.max_per_ip {
            drop(shard);
            // `admitted` frees the total place.
            return Err(Refused::PerIp);
        }
        *n += 1;
        drop(shard);
        admitted.ip = Some(peer);
        Ok(admitted)
    }

    pub(crate) fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    #[cfg(test)]
    fn tracked_ips(&self) -> usize {
        self.per_ip
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> Arc<ConnectionLimits> {
        let trusted = TrustedProxies::new(&palisade::client_ip::ClientIpConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        });
        Arc::new(ConnectionLimits::new(total, per_ip, trusted))
    }

    #[test]
    fn per_ip_limit_refuses_the_extra_connection_and_frees_on_close() {
        let l = limits(100, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = l.admit(ip).unwrap();
        let _b = l.admit(ip).unwrap();
        assert_eq!(l.admit(ip).unwrap_err(), Refused::PerIp);
        assert_eq!(l.open(), 2, "a refused connection holds no place");
        let _other = l.admit("192.0.2.2".parse().unwrap()).unwrap();
        drop(a);
        let _c = l.admit(ip).unwrap();
    }

    #[test]
    fn total_limit_counts_every_peer_and_trusted_proxies_skip_the_per_ip_limit() {
        let l = limits(3, 1);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| l.admit(proxy).unwrap()).collect();
        assert_eq!(
            l.admit("192.0.2.9".parse().unwrap()).unwrap_err(),
            Refused::Total
        );
        drop(held);
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn closed_connections_leave_no_entries_behind() {
        let l = limits(10_000, 4);
        for i in 0..1000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0xC000_0200 + i));
            drop(l.admit(ip).unwrap());
        }
        assert_eq!(l.tracked_ips(), 0);
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_peer_and_mapped_ipv4_as_ipv4() {
        let l = limits(100, 2);
        let _a = l.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let _b = l.admit("2001:db8:1:2::ffff:1".parse().unwrap()).unwrap();
        assert_eq!(
            l.admit("2001:db8:1:2:abcd::9".parse().unwrap())
                .unwrap_err(),
            Refused::PerIp
        );
        let _other_net = l.admit("2001:db8:1:3::1".parse().unwrap()).unwrap();
        let _v4 = l.admit("192.0.2.7".parse().unwrap()).unwrap();
        let _mapped = l.admit("::ffff:192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(
            l.admit("192.0.2.7".parse().unwrap()).unwrap_err(),
            Refused::PerIp
        );
    }
}
