//! Which priority a worker leases from next, and which targets are full.
//!
//! Priorities share the workers 6:3:1 (high, normal, low) by smooth
//! weighted round robin: with a backlog in every lane, ten leases take six
//! high, three normal and one low, interleaved, so low is never starved;
//! a lane with nothing due gives its turn to the next in precedence order.
//! A target with `max_in_flight` deliveries running is skipped, so one slow
//! target never holds the workers the others need.

use crate::names::UpstreamName;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::event::Priority;

pub const WEIGHTS: [(Priority, i64); 3] = [
    (Priority::High, 6),
    (Priority::Normal, 3),
    (Priority::Low, 1),
];

#[derive(Default)]
pub struct Lanes {
    current: Mutex<[i64; 3]>,
}

impl Lanes {
    /// The lanes to try for the next lease: the weighted pick first, then
    /// the others from high to low.
    pub fn order(&self) -> [Priority; 3] {
        let mut current = self.current.lock().expect("lanes");
        let total: i64 = WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut best = 0;
        for (i, (_, weight)) in WEIGHTS.iter().enumerate() {
            current[i] += weight;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        let mut order = [WEIGHTS[best].0; 3];
        let rest = WEIGHTS
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| *p != WEIGHTS[best].0);
        for (slot, priority) in order.iter_mut().skip(1).zip(rest) {
            *slot = priority;
        }
        order
    }
}

/// Deliveries running per target, against each target's cap.
#[derive(Default)]
pub struct TargetSlots {
    running: Mutex<HashMap<String, u32>>,
}

impl TargetSlots {
    /// How many more deliveries each target may start now: its cap minus
    /// what runs.
    pub fn room(&self, caps: &HashMap<UpstreamName, u32>) -> Vec<(UpstreamName, u32)> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        caps.iter()
            .map(|(target, cap)| {
                let busy = running.get(target.as_str()).copied().unwrap_or(0);
                (target.clone(), cap.saturating_sub(busy))
            })
            .collect()
    }

    pub fn take(&self, target: &str) {
        *self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(target.to_string())
            .or_default() += 1;
    }

    pub fn give_back(&self, target: &str) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = running.get_mut(target) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(target);
            }
        }
    }
}

/// One delivery's place under its target's cap, given back when dropped:
/// however the delivery ends (an answer, a store error, a panic), the
/// target never loses a slot for good.
pub struct TargetSlot {
    slots: Arc<TargetSlots>,
    target: String,
}

impl TargetSlot {
    pub fn take(slots: Arc<TargetSlots>, target: &str) -> Self {
        slots.take(target);
        Self {
            slots,
            target: target.to_string(),
        }
    }
}

impl Drop for TargetSlot {
    fn drop(&mut self) {
        self.slots.give_back(&self.target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_leases_with_every_lane_busy_are_six_three_one_interleaved() {
        let lanes = Lanes::default();
        let firsts: Vec<Priority> = (0..10).map(|_| lanes.order()[0]).collect();
        let count = |p| firsts.iter().filter(|f| **f == p).count();
        assert_eq!(
            (
                count(Priority::High),
                count(Priority::Normal),
                count(Priority::Low)
            ),
            (6, 3, 1)
        );
        assert_ne!(firsts[..3], [Priority::High; 3], "interleaved, not bursts");
        for order in (0..10).map(|_| lanes.order()) {
            let mut sorted = order.to_vec();
            sorted.sort();
            assert_eq!(sorted, Priority::ALL, "every lane is offered once");
        }
    }

    #[test]
    fn a_target_has_room_up_to_its_cap_and_again_when_one_finishes() {
        let slots = TargetSlots::default();
        let caps: HashMap<UpstreamName, u32> = [("slow".into(), 2)].into();
        let room = |slots: &TargetSlots| slots.room(&caps)[0].1;
        slots.take("slow");
        assert_eq!(room(&slots), 1);
        slots.take("slow");
        assert_eq!(room(&slots), 0);
        slots.give_back("slow");
        assert_eq!(room(&slots), 1);
    }

    #[test]
    fn a_slot_comes_back_even_when_its_task_panics() {
        let slots = Arc::new(TargetSlots::default());
        let caps: HashMap<UpstreamName, u32> = [("t".into(), 1)].into();
        let held = Arc::clone(&slots);
        let outcome = std::thread::spawn(move || {
            let _slot = TargetSlot::take(held, "t");
            panic!("a delivery bug");
        })
        .join();
        assert!(outcome.is_err());
        assert_eq!(slots.room(&caps)[0].1, 1);
    }
}
