//! Process CPU time, for CPU per request: latency alone hides work a sidecar does off the
//! request path (span export), CPU time does not.
//!
//! The scheduler's own runtime of every thread (`/proc/PID/task/TID/schedstat`, nanoseconds)
//! is the measure; utime + stime from `/proc/PID/stat` is only sampled at the clock tick, which
//! misses much of a process that runs in bursts shorter than a tick, as a proxy does.

/// Clock ticks per second of the utime/stime fields. sysconf(_SC_CLK_TCK) is 100 on every
/// Linux ABI in use (a fixed kernel USER_HZ); reading it would need libc for one constant.
pub const CLK_TCK: u64 = 100;

/// utime + stime of `pid` in clock ticks (1/[`CLK_TCK`] s), or None if it cannot be read.
pub fn ticks(pid: u32) -> Option<u64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime from one /proc/PID/stat line. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted after its last ')'.
pub fn parse_stat(line: &str) -> Option<u64> {
    let rest = &line[line.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Nanoseconds on CPU of every live thread of `pid` (the first field of each thread's
/// schedstat), and of those among them named `thread` (their `comm`), or None if the process
/// cannot be read.
pub fn on_cpu_ns(pid: u32, thread: &str) -> Option<(u64, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let (mut total, mut named) = (0, 0);
    for task in tasks.flatten() {
        // A thread may exit between the listing and the read; it no longer counts.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            let ns = parse_schedstat(&stat)?;
            total += ns;
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == thread {
                named += ns;
            }
        }
    }
    Some((total, named))
}

/// The run time (first field) of one schedstat line: `run_ns wait_ns timeslices`.
pub fn parse_schedstat(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
}

/// CPU microseconds per request from a nanosecond delta.
pub fn micros_per_request_ns(nanos: u64, requests: usize) -> f64 {
    if requests == 0 {
        return 0.0;
    }
    nanos as f64 / 1e3 / requests as f64
}

/// CPU microseconds per request from a tick delta.
pub fn micros_per_request(ticks: u64, requests: usize) -> f64 {
    if requests == 0 {
        return 0.0;
    }
    ticks as f64 * 1e6 / CLK_TCK as f64 / requests as f64
}

/// Median of a small set (mean of the middle two when even); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A 95% bootstrap interval for the median of `values`: the median of 2 000 resamples drawn
/// with replacement, their 2.5th and 97.5th percentiles. Rounds of a bench are noisy in ways no
/// formula knows, so the rounds themselves say how far their median could be off. The
/// resampling is seeded, so one set of rounds always gives one interval.
pub fn median_interval(values: &[f64]) -> Option<(f64, f64)> {
    const RESAMPLES: usize = 2_000;
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    // xorshift64*: plenty for picking indices, and no dependency for it.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next_index = |n: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    };
    let mut medians: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let resample: Vec<f64> = (0..v.len()).map(|_| v[next_index(v.len())]).collect();
            median(&resample)
        })
        .collect();
    medians.sort_by(|a, b| a.total_cmp(b));
    Some((
        medians[RESAMPLES / 40],
        medians[RESAMPLES - 1 - RESAMPLES / 40],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_interval_brackets_the_median_and_narrows_with_agreement() {
        assert_eq!(median_interval(&[]), None);
        assert_eq!(median_interval(&[1.07; 20]), Some((1.07, 1.07)));
        let noisy: Vec<f64> = (0..40).map(|i| 1.0 + f64::from(i % 10) * 0.02).collect();
        let (lo, hi) = median_interval(&noisy).unwrap();
        let m = median(&noisy);
        assert!(lo <= m && m <= hi, "{lo} {m} {hi}");
        assert!(lo > 1.0 && hi < 1.18, "{lo} {hi}");
        assert_eq!(median_interval(&noisy), Some((lo, hi)), "seeded");
        let calmer: Vec<f64> = noisy.iter().map(|x| 1.08 + (x - 1.08) / 4.0).collect();
        let (clo, chi) = median_interval(&calmer).unwrap();
        assert!(chi - clo < hi - lo);
    }

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parens() {
        let line = "1234 (mesh (proxy) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    250 75 0 0 20 0 3 0 100 1000000 300 18446744073709551615";
        assert_eq!(parse_stat(line), Some(325));
    }

    #[test]
    fn truncated_stat_is_none() {
        assert_eq!(parse_stat("1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat("no name here"), None);
    }

    #[test]
    fn own_process_has_readable_ticks() {
        assert!(ticks(std::process::id()).is_some());
    }

    #[test]
    fn schedstat_run_time_grows_with_work() {
        assert_eq!(parse_schedstat("177623836 26494818 587\n"), Some(177623836));
        assert_eq!(parse_schedstat(""), None);
        let pid = std::process::id();
        let before = on_cpu_ns(pid, "cpu-test-spin").unwrap();
        std::thread::Builder::new()
            .name("cpu-test-spin".into())
            .spawn(|| {
                let mut x = 0u64;
                for i in 0..20_000_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
                // Still alive when read below: an exited thread no longer counts.
                std::thread::sleep(std::time::Duration::from_secs(60));
            })
            .unwrap();
        let mut after = on_cpu_ns(pid, "cpu-test-spin").unwrap();
        for _ in 0..500 {
            if after.1 > 10_000_000 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            after = on_cpu_ns(pid, "cpu-test-spin").unwrap();
        }
        assert!(after.0 > before.0);
        assert!(
            after.1 > before.1,
            "the named thread's run time counts: {after:?}"
        );
        assert!(after.0 - before.0 >= after.1 - before.1);
    }

    #[test]
    fn per_request_and_median() {
        assert_eq!(micros_per_request(100, 10_000), 100.0);
        assert_eq!(micros_per_request(5, 0), 0.0);
        assert_eq!(micros_per_request_ns(2_000_000, 1_000), 2.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
