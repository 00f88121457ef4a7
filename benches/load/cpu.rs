//! CPU time, read from /proc (whose tick is 10 ms on Linux): the proxies' and the load
//! generators'. Unlike requests per second it hardly moves when other processes compete for the
//! cores, so it is the steadier measure of what a request costs.

/// Whose CPU time a scenario charges to the proxy under test.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// This process's threads whose name starts with the prefix (the gateways and the bare
    /// pass-through run in the bench's own process, each on a runtime with named threads).
    Threads(&'static str),
    /// A child process (nginx, one process).
    Process(u32),
}

impl Source {
    /// CPU time (user + system) used so far, in microseconds.
    pub fn used_us(self) -> u64 {
        match self {
            Self::Threads(prefix) => threads_us(prefix),
            Self::Process(pid) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat_fields(&stat).map(|f| field(&f, 11) + field(&f, 12)))
                .map_or(0, ticks_to_us),
        }
    }
}

/// CPU time of this process's threads whose name starts with `prefix`, in microseconds.
pub fn threads_us(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut ticks = 0;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        if let Some(fields) = stat_fields(&stat) {
            ticks += field(&fields, 11) + field(&fields, 12);
        }
    }
    ticks_to_us(ticks)
}

/// CPU time of this process's children that have been waited for (`cutime` + `cstime`), in
/// microseconds: what a finished wrk run cost.
pub fn waited_children_us() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| stat_fields(&stat).map(|f| field(&f, 13) + field(&f, 14)))
        .map_or(0, ticks_to_us)
}

/// The fields after `pid (comm) `: state is field 0, utime 11, stime 12, cutime 13, cstime 14.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat.get(close + 2..)?.split(' ').collect())
}

fn field(fields: &[&str], i: usize) -> u64 {
    fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn ticks_to_us(ticks: u64) -> u64 {
    ticks * 10_000
}
