//! Admission: who may hold a session, and what every session may keep. TCP and UDP have their
//! own budgets of sessions (a flood of forged UDP sources must not close the door on TCP
//! exporters), each source address has a cap per transport, and the template memory of all
//! sessions is charged to byte budgets per session, per exporter address and per node.
//!
//! A `Slot` is a taken place: it goes back when its last holder drops it, or at once when the
//! UDP listener evicts an idle session to make room for a new one.

use super::session_logic::Transport;
use crate::config::CollectorSettings;
use crate::wire::ByteBudget;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Why a session was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The transport's session budget is full.
    Transport,
    /// This source address holds `max_sessions_per_exporter` sessions of the transport.
    Exporter,
}

#[derive(Debug, Default)]
struct Exporter {
    tcp: usize,
    udp: usize,
    /// Template bytes of all this address's sessions; a child of the node's budget.
    templates: Option<Arc<ByteBudget>>,
}

#[derive(Debug)]
pub struct Admission {
    max_tcp: usize,
    max_udp: usize,
    per_exporter: usize,
    template_bytes_per_session: usize,
    template_bytes_per_exporter: usize,
    tcp_live: AtomicUsize,
    udp_live: AtomicUsize,
    exporters: Mutex<HashMap<IpAddr, Exporter>>,
    templates_total: Arc<ByteBudget>,
    /// Datagrams queued for UDP sessions, all together.
    pub udp_queue_total: Arc<ByteBudget>,
    /// Data Sets held for a missing template, all sessions together.
    pub pending_total: Arc<ByteBudget>,
    pub refused_tcp: AtomicU64,
    pub refused_udp: AtomicU64,
    /// UDP sessions retired early to make room for a new one.
    pub evicted_udp: AtomicU64,
    /// Sessions refused because no tenant owns their exporter.
    pub refused_unknown: AtomicU64,
}

impl Admission {
    pub fn new(s: &CollectorSettings) -> Arc<Admission> {
        Arc::new(Admission {
            max_tcp: s.max_tcp_sessions,
            max_udp: s.max_udp_sessions,
            per_exporter: s.max_sessions_per_exporter,
            template_bytes_per_session: s.template_bytes_per_session,
            template_bytes_per_exporter: s.template_bytes_per_exporter,
            tcp_live: AtomicUsize::new(0),
            udp_live: AtomicUsize::new(0),
            exporters: Mutex::new(HashMap::new()),
            templates_total: Arc::new(ByteBudget::new("node", s.template_bytes_total, None)),
            udp_queue_total: Arc::new(ByteBudget::new(
                "node's UDP queues",
                s.udp_queue_bytes_total,
                None,
            )),
            pending_total: Arc::new(ByteBudget::new(
                "node's held data sets",
                s.pending_bytes_total,
                None,
            )),
            refused_tcp: AtomicU64::new(0),
            refused_udp: AtomicU64::new(0),
            evicted_udp: AtomicU64::new(0),
            refused_unknown: AtomicU64::new(0),
        })
    }

    fn exporters(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Exporter>> {
        // A panic while holding it leaves plain counters behind: still usable.
        self.exporters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, t: Transport) -> &AtomicUsize {
        match t {
            Transport::Tcp => &self.tcp_live,
            Transport::Udp => &self.udp_live,
        }
    }

    /// Takes a session place for `ip` on `transport`, or says which bound refused it (the
    /// refusal is counted; logging is the caller's, rate-limited).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, transport: Transport) -> Result<Slot, Refusal> {
        let max = match transport {
            Transport::Tcp => self.max_tcp,
            Transport::Udp => self.max_udp,
        };
        let refused = |r| {
            match transport {
                Transport::Tcp => &self.refused_tcp,
                Transport::Udp => &self.refused_udp,
            }
            .fetch_add(1, Ordering::Relaxed);
            Err(r)
        };
        let mut exporters = self.exporters();
        let live = self.live(transport);
        // The address's own cap first: an address at its cap must make room among its own
        // sessions (the UDP listener evicts by the refusal), never among other exporters'.
        let held = exporters.get(&ip).map_or(0, |e| match transport {
            Transport::Tcp => e.tcp,
            Transport::Udp => e.udp,
        });
        if held >= self.per_exporter {
            return refused(Refusal::Exporter);
        }
        if live.load(Ordering::Relaxed) >= max {
            return refused(Refusal::Transport);
        }
        let e = exporters.entry(ip).or_default();
        let n = match transport {
            Transport::Tcp => &mut e.tcp,
            Transport::Udp => &mut e.udp,
        };
        *n += 1;
        live.fetch_add(1, Ordering::Relaxed);
        let templates = e
            .templates
            .get_or_insert_with(|| {
                Arc::new(ByteBudget::new(
                    "exporter",
                    self.template_bytes_per_exporter,
                    Some(self.templates_total.clone()),
                ))
            })
            .clone();
        Ok(Slot(Arc::new(SlotInner {
            admission: self.clone(),
            ip,
            transport,
            released: AtomicBool::new(false),
            templates,
        })))
    }

    fn release(&self, ip: IpAddr, transport: Transport) {
        let mut exporters = self.exporters();
        self.live(transport).fetch_sub(1, Ordering::Relaxed);
        if let Some(e) = exporters.get_mut(&ip) {
            match transport {
                Transport::Tcp => e.tcp = e.tcp.saturating_sub(1),
                Transport::Udp => e.udp = e.udp.saturating_sub(1),
            }
            // Forgotten with its last session: spoofed sources do not pile up entries. Bytes a
            // session still holds stay charged to the budget it has (and to the node's).
            if e.tcp == 0 && e.udp == 0 {
                exporters.remove(&ip);
            }
        }
    }

    pub fn live_sessions(&self) -> (usize, usize) {
        (
            self.tcp_live.load(Ordering::Relaxed),
            self.udp_live.load(Ordering::Relaxed),
        )
    }

    /// Bytes of compiled templates held by every session of this node.
    pub fn template_bytes(&self) -> usize {
        self.templates_total.used()
    }

    /// Source addresses with at least one session.
    pub fn exporters_known(&self) -> usize {
        self.exporters().len()
    }
}

#[derive(Debug)]
struct SlotInner {
    admission: Arc<Admission>,
    ip: IpAddr,
    transport: Transport,
    released: AtomicBool,
    templates: Arc<ByteBudget>,
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        self.release();
    }
}

impl SlotInner {
    fn release(&self) {
        if !self.released.swap(true, Ordering::Relaxed) {
            self.admission.release(self.ip, self.transport);
        }
    }
}

/// A session's place; clones share it.
#[derive(Debug, Clone)]
pub struct Slot(Arc<SlotInner>);

impl Slot {
    /// Gives the place back now (an evicted UDP session), not when the last clone goes.
    pub fn release(&self) {
        self.0.release();
    }

    /// The node's budget for Data Sets held while their template is missing.
    pub fn pending_budget(&self) -> Arc<ByteBudget> {
        self.0.admission.pending_total.clone()
    }

    /// A new session's own template budget, a child of its exporter's.
    pub fn template_budget(&self) -> Arc<ByteBudget> {
        Arc::new(ByteBudget::new(
            "session",
            self.0.admission.template_bytes_per_session,
            Some(self.0.templates.clone()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CollectorSettings {
        CollectorSettings {
            max_tcp_sessions: 3,
            max_udp_sessions: 2,
            max_sessions_per_exporter: 2,
            ..CollectorSettings::default()
        }
    }

    #[test]
    fn transports_and_addresses_have_their_own_budgets() {
        let a = Admission::new(&settings());
        let x: IpAddr = "10.0.0.1".parse().expect("ip");
        let y: IpAddr = "10.0.0.2".parse().expect("ip");
        let u1 = a.admit(x, Transport::Udp).expect("udp 1");
        let _u2 = a.admit(y, Transport::Udp).expect("udp 2");
        assert_eq!(a.admit(y, Transport::Udp).err(), Some(Refusal::Transport));
        // UDP is full; TCP is not touched by it.
        let t1 = a.admit(x, Transport::Tcp).expect("tcp 1");
        let _t2 = a.admit(x, Transport::Tcp).expect("tcp 2");
        assert_eq!(a.admit(x, Transport::Tcp).err(), Some(Refusal::Exporter));
        let _t3 = a.admit(y, Transport::Tcp).expect("another address");
        // Both tables full and the address at its cap: the refusal names the address, so the
        // room is made among its own sessions.
        assert_eq!(a.admit(x, Transport::Tcp).err(), Some(Refusal::Exporter));
        assert_eq!(a.live_sessions(), (3, 2));
        // An early release and the drop of the last clone give the place back once.
        let held = u1.clone();
        u1.release();
        assert_eq!(a.live_sessions(), (3, 1));
        drop(held);
        drop(u1);
        assert_eq!(a.live_sessions(), (3, 1));
        drop(t1);
        assert_eq!(a.live_sessions(), (2, 1));
        assert_eq!(a.refused_udp.load(Ordering::Relaxed), 1);
        assert_eq!(a.refused_tcp.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn template_bytes_are_charged_per_session_exporter_and_node() {
        let s = CollectorSettings {
            template_bytes_per_session: 100,
            template_bytes_per_exporter: 150,
            template_bytes_total: 1000,
            ..settings()
        };
        let a = Admission::new(&s);
        let x: IpAddr = "10.0.0.1".parse().expect("ip");
        let s1 = a.admit(x, Transport::Tcp).expect("1");
        let s2 = a.admit(x, Transport::Udp).expect("2");
        let (b1, b2) = (s1.template_budget(), s2.template_budget());
        b1.try_take(100).expect("the session's whole budget");
        assert!(b1.try_take(1).is_err());
        assert_eq!(b2.try_take(60).map_err(|e| e.name), Err("exporter"));
        b2.try_take(50).expect("what the exporter has left");
        assert_eq!(a.template_bytes(), 150);
        drop(b1);
        assert_eq!(
            a.template_bytes(),
            150,
            "a budget gives back through its decoder"
        );
    }
}
