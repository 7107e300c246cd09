//! The process's CPU time, read from the OS.

use std::time::Duration;

/// Clock ticks per second of `/proc` times (`USER_HZ`): 100 on every
/// Linux architecture this runs on; the kernel fixes it for user space.
const TICKS_PER_SECOND: u64 = 100;

/// User plus system CPU time this process has used so far, from
/// `/proc/self/stat` (10 ms resolution). `None` where that file does not
/// exist (not Linux) or cannot be parsed.
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: fields resume after its ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // Fields 3.. of proc(5): state is the first here; utime is field 14,
    // stime field 15, so the 12th and 13th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SECOND,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let Some(before) = process_cpu_time() else {
            return; // not Linux
        };
        // Work until the reading has moved by 30 ms of CPU (the resolution
        // is 10 ms), however little CPU a busy machine gives this thread; a
        // reading that never moves fails after a minute of work.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after < before + Duration::from_millis(30) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "CPU time never grew: {before:?} -> {after:?}"
            );
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            after = process_cpu_time().unwrap();
        }
    }
}
