//! The backend order of one delivery, for every `balance`, as a Pingora
//! `BackendSelection`: the first backend is the choice, the rest are the
//! fallbacks when it is unhealthy or its breaker is open.
//!
//! - `round_robin`: a rotating start, weights ignored.
//! - `random`: a uniform start.
//! - `weighted`: smooth weighted round robin (nginx's): weights 3:1 give
//!   A,A,B,A rather than Pingora's A,A,A,B, so a heavy backend never takes
//!   a burst.
//! - `least_connections`: fewest calls in flight first, ties rotating.
//! - `ewma`: power of two choices over each backend's peak-EWMA latency
//!   weighted by its calls in flight ([`super::ewma`]): two backends drawn
//!   at random, the cheaper first.
//!
//! The counters and estimates live in a [`Loads`] table outside the
//! selector, so they survive the selector being rebuilt when discovery
//! changes the backends.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;

use super::ewma::{self, PeakEwma};
use crate::config::upstreams::Balance;
use crate::time::Clock;

/// What one backend is carrying: its calls in flight and its latency
/// estimate.
#[derive(Default)]
pub struct BackendLoad {
    pub in_flight: AtomicUsize,
    ewma: Mutex<PeakEwma>,
}

impl BackendLoad {
    pub fn count(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// An answer (or, as a penalty, a failure) seen at `now`.
    pub fn observe(&self, latency_micros: f64, now: u64) {
        self.ewma
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(latency_micros, now);
    }

    pub fn score(&self, now: u64) -> f64 {
        let ewma = *self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        ewma::score(&ewma, self.count(), now)
    }

    /// The latency estimate at `now`, in micros (0 before any answer).
    pub fn latency(&self, now: u64) -> f64 {
        self.ewma
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cost(now)
    }
}

/// The load of every backend address, shared by every selector a group
/// builds.
#[derive(Default)]
pub struct Loads {
    loads: RwLock<HashMap<String, Arc<BackendLoad>>>,
}

impl Loads {
    pub fn of(&self, backend: &Backend) -> Arc<BackendLoad> {
        let addr = backend.addr.to_string();
        if let Some(load) = self
            .loads
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
        {
            return Arc::clone(load);
        }
        let mut loads = self.loads.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(loads.entry(addr).or_default())
    }

    pub fn count(&self, backend: &Backend) -> usize {
        self.of(backend).count()
    }

    /// Forgets the backends that left, once nothing runs on them (a call
    /// in flight keeps its own handle either way).
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        self.loads
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|addr, load| live.contains(addr) || load.count() > 0);
    }

    pub fn tracked(&self) -> usize {
        self.loads.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// What every selector of a group is built with.
pub struct SelectionConfig {
    pub balance: Balance,
    pub loads: Arc<Loads>,
    pub clock: Arc<dyn Clock>,
}

pub struct Selector {
    backends: Vec<Backend>,
    balance: Balance,
    cursor: AtomicUsize,
    /// Smooth weighted round robin's current weights, per backend.
    current_weights: Mutex<Vec<i64>>,
    loads: Arc<Loads>,
    clock: Arc<dyn Clock>,
}

impl Selector {
    fn new(backends: &BTreeSet<Backend>, config: &SelectionConfig) -> Self {
        Self {
            backends: backends.iter().cloned().collect(),
            balance: config.balance,
            cursor: AtomicUsize::new(0),
            current_weights: Mutex::new(vec![0; backends.len()]),
            loads: Arc::clone(&config.loads),
            clock: Arc::clone(&config.clock),
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
                    .map(|i| (self.loads.count(&self.backends[i]), i))
                    .collect();
                // Stable: equal counts keep the rotated order.
                order.sort_by_key(|(count, _)| *count);
                order.into_iter().map(|(_, i)| i).collect()
            }
            Balance::Ewma => {
                let (first, second) = self.two_choices();
                let mut order = vec![first];
                if second != first {
                    order.push(second);
                }
                order.extend(rotated(first + 1).filter(|&i| i != first && i != second));
                order
            }
        }
    }

    /// Power of two choices: two distinct backends at random, the one with
    /// the lower score first.
    fn two_choices(&self) -> (usize, usize) {
        let n = self.backends.len();
        let a = random_below(n);
        if n == 1 {
            return (a, a);
        }
        let b = (a + 1 + random_below(n - 1)) % n;
        let now = self.clock.now_micros();
        let score = |i: usize| self.loads.of(&self.backends[i]).score(now);
        if score(b) < score(a) {
            (b, a)
        } else {
            (a, b)
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
                loads: Arc::default(),
                clock: crate::time::MonotonicClock::shared(),
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
    use crate::time::ManualClock;

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
                loads: Arc::default(),
                clock: crate::time::MonotonicClock::shared(),
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
        let loads = Arc::new(Loads::default());
        let config = SelectionConfig {
            balance: Balance::LeastConnections,
            loads: Arc::clone(&loads),
            clock: crate::time::MonotonicClock::shared(),
        };
        let set = backends(&[1, 1, 1]);
        let busy: Vec<Backend> = set.iter().take(2).cloned().collect();
        for backend in &busy {
            loads.of(backend).in_flight.fetch_add(3, Ordering::AcqRel);
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
            Balance::Ewma,
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

    /// Calls arriving every 2 ms of virtual time to an `ewma` group, each
    /// taking its backend's latency: completions are observed when due, so
    /// calls in flight weigh as they do for real.
    struct Simulation {
        clock: Arc<ManualClock>,
        loads: Arc<Loads>,
        selector: Arc<Selector>,
        /// (due micros, backend index, latency micros)
        pending: Vec<(u64, usize, u64)>,
    }

    impl Simulation {
        fn new(backend_count: usize) -> Self {
            let clock = Arc::new(ManualClock::default());
            let loads = Arc::new(Loads::default());
            let selector = Self::build(backend_count, &clock, &loads);
            Self {
                clock,
                loads,
                selector,
                pending: Vec::new(),
            }
        }

        fn build(count: usize, clock: &Arc<ManualClock>, loads: &Arc<Loads>) -> Arc<Selector> {
            let clock: Arc<dyn Clock> = Arc::clone(clock) as Arc<dyn Clock>;
            Arc::new(Selector::build_with_config(
                &backends(&vec![1; count]),
                &SelectionConfig {
                    balance: Balance::Ewma,
                    loads: Arc::clone(loads),
                    clock,
                },
            ))
        }

        /// Runs `seconds` of calls; `latency_ms(backend)` is each call's
        /// latency. Returns the calls each backend took.
        fn run(&mut self, seconds: u64, latency_ms: impl Fn(usize) -> u64) -> Vec<usize> {
            let mut taken = vec![0; self.selector.backends.len()];
            for _ in 0..seconds * 500 {
                self.clock.advance(std::time::Duration::from_millis(2));
                let now = self.clock.now_micros();
                let set = self.selector.backends.clone();
                self.pending.retain(|&(due, index, latency)| {
                    if due > now {
                        return true;
                    }
                    let load = self.loads.of(&set[index]);
                    load.in_flight.fetch_sub(1, Ordering::AcqRel);
                    load.observe(latency as f64, due);
                    false
                });
                let chosen = self.selector.iter(b"").next().unwrap().clone();
                let index = set.iter().position(|b| *b == chosen).unwrap();
                taken[index] += 1;
                self.loads
                    .of(&chosen)
                    .in_flight
                    .fetch_add(1, Ordering::AcqRel);
                let latency = latency_ms(index) * 1000;
                self.pending.push((now + latency, index, latency));
            }
            taken
        }
    }

    fn share(taken: &[usize], index: usize) -> f64 {
        taken[index] as f64 / taken.iter().sum::<usize>() as f64
    }

    #[test]
    fn ewma_takes_traffic_off_a_backend_that_turns_slow_within_seconds() {
        let mut sim = Simulation::new(3);
        let even = sim.run(10, |_| 2);
        assert!(share(&even, 0) > 0.25, "even at first: {even:?}");
        let slow = |i: usize| if i == 0 { 152 } else { 2 };
        sim.run(2, slow);
        let after = sim.run(3, slow);
        assert!(
            share(&after, 0) < 0.03,
            "two seconds after turning slow: {after:?}"
        );
    }

    #[test]
    fn ewma_gives_a_recovered_backend_its_share_back_within_ten_seconds() {
        let mut sim = Simulation::new(3);
        sim.run(10, |i| if i == 0 { 152 } else { 2 });
        sim.run(8, |_| 2);
        let recovered = sim.run(2, |_| 2);
        assert!(
            share(&recovered, 0) > 0.25,
            "8 to 10 s after recovering: {recovered:?}"
        );
    }

    #[test]
    fn ewma_tries_a_new_backend() {
        let mut sim = Simulation::new(2);
        sim.run(5, |_| 2);
        sim.selector = Simulation::build(3, &sim.clock, &sim.loads);
        let first_second = sim.run(1, |_| 2);
        assert!(share(&first_second, 2) > 0.2, "{first_second:?}");
    }

    #[test]
    fn ewma_prefers_the_faster_of_two_and_still_uses_the_slower() {
        let mut sim = Simulation::new(2);
        let taken = sim.run(20, |i| if i == 0 { 4 } else { 8 });
        assert!(share(&taken, 0) > 0.55, "{taken:?}");
        assert!(share(&taken, 1) > 0.1, "{taken:?}");
    }
}
