//! What the process asks of the operating system for its own threads.
//!
//! A sidecar shares its pod's CPU with the app, often one core for both.
//! Work that no request waits for (the access-log writer, the reload poll,
//! health checks, the store monitor) must not preempt the egress while it
//! serves: on that one core, a background thread that wakes and runs for a
//! millisecond is a millisecond added to every request queued behind it.

/// Marks the calling thread as background work: `SCHED_BATCH` (it never
/// preempts a running thread when it wakes) at nice 10 (a smaller share
/// under contention). It still runs whenever the core has room, so it
/// keeps up at any load the egress leaves room for. Linux only; elsewhere
/// nothing changes. A refusal (a seccomp profile) is logged and ignored.
pub fn lower_this_thread() {
    set_this_thread(true);
}

/// Marks the calling thread (the webhook ingress) as work that may wait
/// when the core is contended: nice 10, its policy unchanged, so it still
/// preempts batch work when a request arrives. Delivery keeps nice 0: at
/// saturation it gets the CPU to deliver what the ingress accepts, and the
/// acks slow down instead of a backlog growing without bound. Below
/// saturation the core has room for both and nothing changes.
pub fn yield_to_delivery() {
    set_this_thread(false);
}

fn set_this_thread(batch: bool) {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        };
        // The crate maps 0..=99 onto nice 19..=-20; 22 is nice 10.
        let Ok(value) = ThreadPriorityValue::try_from(22u8) else {
            return;
        };
        let policy = if batch {
            NormalThreadSchedulePolicy::Batch
        } else {
            NormalThreadSchedulePolicy::Other
        };
        if let Err(error) = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Crossplatform(value),
            ThreadSchedulePolicy::Normal(policy),
        ) {
            tracing::debug!(?error, "cannot change a thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = batch;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    const SCHED_OTHER: i32 = 0;
    const SCHED_BATCH: i32 = 3;

    /// (scheduling policy, nice) of thread `tid` of this process.
    fn policy_and_nice(tid: i32) -> (i32, i32) {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // After the parenthesised name: field 3 (state) is index 0, so
        // nice (field 19) is index 16 and policy (field 41) index 38.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        (fields[38].parse().unwrap(), fields[16].parse().unwrap())
    }

    /// The calling thread's id, as /proc/self/task names it.
    fn own_tid() -> i32 {
        std::fs::read_link("/proc/thread-self")
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_lowered_thread_is_batch_at_nice_10_and_others_are_untouched() {
        let lowered = std::thread::spawn(|| {
            lower_this_thread();
            policy_and_nice(own_tid())
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (SCHED_BATCH, 10));
        assert_eq!(policy_and_nice(own_tid()), (SCHED_OTHER, 0));
        let ingress = std::thread::spawn(|| {
            yield_to_delivery();
            policy_and_nice(own_tid())
        })
        .join()
        .unwrap();
        assert_eq!(ingress, (SCHED_OTHER, 10));
    }
}
