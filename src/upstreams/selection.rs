//! The backend order of one delivery, for every `balance`, as a Pingora
//! `BackendSelection`: the first backend is the choice, the rest are the
//! fallbacks when it is unhealthy or its breaker is open.
//!
//! - `round_robin`: a rotating start, weights ignored.
//! - `random`: a uniform start.
//! - `weighted`: smooth weighted round robin (nginx's): weights 3:1 give
//!   A,A,B,A rather than Pingora's A,A,A,B, so a heavy backend never takes
//!   a burst.
//! - `least_connections`: fewest deliveries in flight first, ties rotating.
//!   The counters live in an [`InFlight`] table outside the selector, so
//!   they survive the selector being rebuilt when discovery changes the
//!   backends.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;

use crate::config::upstreams::Balance;

/// Deliveries in flight per backend address, shared by every selector a
/// group builds.
#[derive(Default)]
pub struct InFlight {
    counters: RwLock<HashMap<String, Arc<AtomicUsize>>>,
}

impl InFlight {
    pub fn counter(&self, backend: &Backend) -> Arc<AtomicUsize> {
        let addr = backend.addr.to_string();
        if let Some(counter) = self
            .counters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
        {
            return Arc::clone(counter);
        }
        let mut counters = self.counters.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(counters.entry(addr).or_default())
    }

    pub fn count(&self, backend: &Backend) -> usize {
        self.counter(backend).load(Ordering::Acquire)
    }

    /// Forgets the counters of backends that left, once nothing runs on
    /// them (a delivery in flight keeps its own handle either way).
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        self.counters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|addr, count| live.contains(addr) || count.load(Ordering::Acquire) > 0);
    }

    pub fn tracked(&self) -> usize {
        self.counters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// What every selector of a group is built with.
pub struct SelectionConfig {
    pub balance: Balance,
    pub in_flight: Arc<InFlight>,
}

pub struct Selector {
    backends: Vec<Backend>,
    balance: Balance,
    cursor: AtomicUsize,
    /// Smooth weighted round robin's current weights, per backend.
    current_weights: Mutex<Vec<i64>>,
    in_flight: Arc<InFlight>,
}

impl Selector {
    fn new(backends: &BTreeSet<Backend>, config: &SelectionConfig) -> Self {
        Self {
            backends: backends.iter().cloned().collect(),
            balance: config.balance,
            cursor: AtomicUsize::new(0),
            current_weights: Mutex::new(vec![0; backends.len()]),
            in_flight: Arc::clone(&config.in_flight),
        }
    }

    /// Indexes of the backends in the order they should be tried.
    fn order(&self) -> Vec<usize> {
        let n = self.backends.len();
        if n == 0 {
            return Vec::new();
        }
        let rotated = |start: usize| (0..n).map(move |i| (start + i) % n);
        match self.balance {
            Balance::RoundRobin => {
                rotated(self.cursor.fetch_add(1, Ordering::Relaxed) % n).collect()
            }
            Balance::Random => rotated(random_below(n)).collect(),
            Balance::Weighted => {
                let first = self.smooth_weighted_pick();
                let mut order = vec![first];
                order.extend(rotated(first + 1).filter(|&i| i != first));
                order
            }
            Balance::LeastConnections => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
                let mut order: Vec<(usize, usize)> = rotated(start)
                    .map(|i| (self.in_flight.count(&self.backends[i]), i))
                    .collect();
                // Stable: equal counts keep the rotated order.
                order.sort_by_key(|(count, _)| *count);
                order.into_iter().map(|(_, i)| i).collect()
            }
        }
    }

    /// nginx's smooth weighted round robin: every backend gains its weight,
    /// the richest is chosen and pays the total.
    fn smooth_weighted_pick(&self) -> usize {
        let mut current = self.current_weights.lock().expect("weights");
        let total: i64 = self.backends.iter().map(|b| b.weight as i64).sum();
        let mut best = 0;
        for (i, backend) in self.backends.iter().enumerate() {
            current[i] += backend.weight as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        best
    }
}

fn random_below(n: usize) -> usize {
    (crate::resilience::retry::unit_random() * n as f64) as usize % n
}

impl BackendSelection for Selector {
    type Iter = Preference;
    type Config = SelectionConfig;

    fn build_with_config(backends: &BTreeSet<Backend>, config: &SelectionConfig) -> Self {
        Self::new(backends, config)
    }

    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self::new(
            backends,
            &SelectionConfig {
                balance: Balance::RoundRobin,
                in_flight: Arc::default(),
            },
        )
    }

    fn iter(self: &Arc<Self>, _key: &[u8]) -> Preference {
        Preference {
            selector: Arc::clone(self),
            order: self.order(),
            next: 0,
        }
    }
}

/// The backends of one selection, best first.
pub struct Preference {
    selector: Arc<Selector>,
    order: Vec<usize>,
    next: usize,
}

impl BackendIter for Preference {
    fn next(&mut self) -> Option<&Backend> {
        let index = *self.order.get(self.next)?;
        self.next += 1;
        self.selector.backends.get(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(weights: &[usize]) -> BTreeSet<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Backend::new_with_weight(&format!("127.0.0.1:{}", 7001 + i), *w).unwrap())
            .collect()
    }

    fn selector(balance: Balance, weights: &[usize]) -> Arc<Selector> {
        Arc::new(Selector::build_with_config(
            &backends(weights),
            &SelectionConfig {
                balance,
                in_flight: Arc::default(),
            },
        ))
    }

    fn first_ports(selector: &Arc<Selector>, picks: usize) -> Vec<u16> {
        (0..picks)
            .map(|_| {
                let mut iter = selector.iter(b"");
                let backend = iter.next().unwrap();
                backend.addr.as_inet().unwrap().port() - 7000
            })
            .collect()
    }

    #[test]
    fn round_robin_takes_turns_and_ignores_weights() {
        let picks = first_ports(&selector(Balance::RoundRobin, &[3, 1, 1]), 6);
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn weighted_interleaves_by_weight() {
        let picks = first_ports(&selector(Balance::Weighted, &[3, 1, 1]), 10);
        assert_eq!(picks, [1, 2, 1, 3, 1, 1, 2, 1, 3, 1]);
        let picks = first_ports(&selector(Balance::Weighted, &[3, 1]), 8);
        assert_eq!(picks, [1, 1, 2, 1, 1, 1, 2, 1], "never A,A,A,B");
    }

    #[test]
    fn least_connections_prefers_the_idle_backend_and_survives_a_rebuild() {
        let in_flight = Arc::new(InFlight::default());
        let config = SelectionConfig {
            balance: Balance::LeastConnections,
            in_flight: Arc::clone(&in_flight),
        };
        let set = backends(&[1, 1, 1]);
        let busy: Vec<Backend> = set.iter().take(2).cloned().collect();
        for backend in &busy {
            in_flight.counter(backend).fetch_add(3, Ordering::AcqRel);
        }
        let rebuilt = Arc::new(Selector::build_with_config(&set, &config));
        assert_eq!(first_ports(&rebuilt, 4), [3, 3, 3, 3]);
        let mut iter = rebuilt.iter(b"");
        iter.next();
        assert!(iter.next().is_some(), "the busy ones remain as fallbacks");
    }

    #[test]
    fn every_selection_offers_every_backend_once() {
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::Weighted,
            Balance::LeastConnections,
        ] {
            let selector = selector(balance, &[2, 1, 1]);
            let mut iter = selector.iter(b"");
            let mut seen = BTreeSet::new();
            while let Some(backend) = iter.next() {
                assert!(seen.insert(backend.addr.to_string()), "{balance:?}");
            }
            assert_eq!(seen.len(), 3, "{balance:?}");
        }
    }
}
