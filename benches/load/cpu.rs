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

/// CPU time used so far, split into user space and the kernel (system calls, and the network
/// stack's work done on the caller's behalf), in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub user_us: u64,
    pub system_us: u64,
}

impl Usage {
    pub fn total_us(self) -> u64 {
        self.user_us + self.system_us
    }

    /// What was used between `earlier` and `self` (a thread that ended in between takes its
    /// time with it: never less than nothing).
    pub fn since(self, earlier: Self) -> Self {
        Self {
            user_us: self.user_us.saturating_sub(earlier.user_us),
            system_us: self.system_us.saturating_sub(earlier.system_us),
        }
    }
}

impl Source {
    /// CPU time used so far.
    pub fn used(self) -> Usage {
        match self {
            Self::Threads(prefix) => threads_usage(prefix),
            Self::Process(pid) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat_fields(&stat).map(|f| usage(&f)))
                .unwrap_or_default(),
        }
    }
}

/// CPU time (user + system) of this process's threads whose name starts with `prefix`, in
/// microseconds.
pub fn threads_us(prefix: &str) -> u64 {
    threads_usage(prefix).total_us()
}

/// CPU time of this process's threads whose name starts with `prefix`.
fn threads_usage(prefix: &str) -> Usage {
    let mut sum = Usage::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return sum;
    };
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
            let one = usage(&fields);
            sum.user_us += one.user_us;
            sum.system_us += one.system_us;
        }
    }
    sum
}

/// utime and stime of one `stat` line's fields.
fn usage(fields: &[&str]) -> Usage {
    Usage {
        user_us: ticks_to_us(field(fields, 11)),
        system_us: ticks_to_us(field(fields, 12)),
    }
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
